"""Traffic for crash tests: every acknowledged request leaves a mark in Criteo's end state.

Used by the SIGKILL end-to-end test (`test_serve.py`) and by `benchmarks/torture.py`. A sender
sends the requests of one traffic stream one after the other, each until it is acknowledged, the way
Segment does:

- `TrackingSender`: batches built by Segment's Python library (`Client(send=False)` makes the
  messages: messageId, timestamp, context.library) and sent by its own upload code
  (`Consumer.request`: gzip, Basic auth, `sentAt`, `X-Retry-Count`, its retry schedule — first retry
  at once, then 0.5 s, 1 s, 2 s… — with the same messageIds);
- `WebhookSender`: Engage messages as signed JSON arrays, as the Webhooks (Actions) destination
  posts them, retried on 5xx, 408, 429, timeouts and network errors with randomized exponential
  backoff, as Segment's pipeline does.

Where the library gives up (after `max_retries`, 10 by default), the batch is sent again, as an
application does from the library's `on_error`: every request is acknowledged in the end, so every
request counts. Crash runs use fewer retries: at 10 the library's waits grow to 60 s, and a sender
would sleep through many restarts instead of sending.

The streams (`EngageTraffic`, `TrackingTraffic`) are pure functions of (stream name, request
number): request k always carries the same messages. Request k of a stream

- enters people nobody touches again (request k's mark: lost, they are missing from Criteo);
- enters people whom a later request of the same stream makes leave (an exit, or consent withdrawn,
  later given back for some): losing that later request leaves them in Criteo (or out);
- (Tracking API) places an order with an id of its own: its trackTransaction must arrive.

Event times are request k's own second (`t0 + k`), so the latest event per (person, audience) is the
same whatever order the requests arrive in. `Expected` folds acknowledged requests into the state
Criteo must end in: per audience and identifier type, the identifiers of its members who consent.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import queue
import random
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from segment.analytics.client import Client
from segment.analytics.consumer import Consumer
from segment.analytics.request import APIError, parse_retry_after

AUDIENCES = ("cart_abandoners", "vip_buyers", "newsletter")
CONSENT_EVENT = "Segment Consent Preference Updated"
WEBHOOK_RETRYABLE = frozenset({408, 423, 429})  # and every 5xx but 501 (Segment's Actions framework)
WEBHOOK_TIMEOUT_SECS = 10.0  # the Actions framework's request timeout
WEBHOOK_BACKOFF_SECS = (0.1, 4.0)  # first wait, cap; each wait is random in [0, min(cap, first * 2^n)]


def sha256(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def madid(person: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, person)).upper()


def email(person: str) -> str:
    return f"{person}@crash.example"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def personas(audience: str) -> dict[str, Any]:
    return {"personas": {"computation_class": "audience", "computation_key": audience}}


def audience(n: int) -> str:
    return AUDIENCES[n % len(AUDIENCES)]


# ------------------------------------------------------------------------------ what a request means


@dataclass
class Request:
    """One request's messages and what they mean once acknowledged."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    memberships: list[tuple[str, str, float, bool]] = field(default_factory=list)  # person, audience, ts, in?
    consents: list[tuple[str, float, bool]] = field(default_factory=list)  # person, ts, consents?
    identifiers: list[tuple[str, str, str]] = field(default_factory=list)  # person, Criteo type, value
    orders: list[str] = field(default_factory=list)


class Expected:
    """The state Criteo must end in, from the acknowledged requests (senders add from their threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.memberships: dict[tuple[str, str], tuple[float, bool]] = {}
        self.consents: dict[str, tuple[float, bool]] = {}
        self.identifiers: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self.orders: set[str] = set()
        self.requests = 0
        self.events = 0

    def add(self, request: Request) -> None:
        with self.lock:
            self.requests += 1
            self.events += len(request.messages)
            for person, name, ts, member in request.memberships:
                self._latest(self.memberships, (person, name), (ts, member))
            for person, ts, consents in request.consents:
                self._latest(self.consents, person, (ts, consents))
            for person, kind, value in request.identifiers:
                self.identifiers[person].add((kind, value))
            self.orders.update(request.orders)

    @staticmethod
    def _latest(table: dict[Any, tuple[float, bool]], key: Any, value: tuple[float, bool]) -> None:
        if key not in table or table[key][0] < value[0]:
            table[key] = value

    def members(self) -> dict[str, dict[str, set[str]]]:
        """Audience -> identifier type -> identifiers: members who consent (absent consent = allow)."""
        out: dict[str, dict[str, set[str]]] = {}
        with self.lock:
            for (person, name), (_, member) in self.memberships.items():
                if member and self.consents.get(person, (0.0, True))[1]:
                    for kind, value in self.identifiers[person]:
                        out.setdefault(name, {}).setdefault(kind, set()).add(value)
        return out

    def owners(self) -> dict[str, str]:
        """Identifier -> the person it belongs to (for messages about differences)."""
        with self.lock:
            return {value: person for person, ids in self.identifiers.items() for _, value in ids}


Identifier = tuple[str, str, str]  # audience, identifier type, value


def flatten(members: dict[str, dict[str, set[str]]]) -> set[Identifier]:
    """Audience -> type -> values as one set (an emptied segment, which the emulator keeps, adds nothing)."""
    return {(name, kind, v) for name, kinds in members.items() for kind, values in kinds.items() for v in values}


def differences(expected: Expected, actual: dict[str, dict[str, set[str]]], limit: int = 5) -> list[str]:
    """What Criteo lacks or has too much, per audience and identifier type, with a few people named."""
    want, have = flatten(expected.members()), flatten(actual)
    owners = expected.owners()
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for label, found in (("missing", want - have), ("extra", have - want)):
        for name, kind, value in found:
            groups[name, kind, label].append(owners.get(value, value))
    return [
        f"{name}/{kind}: {len(people)} {label} ({', '.join(sorted(people)[:limit])})"
        for (name, kind, label), people in sorted(groups.items())
    ]


def transactions(state: dict[str, Any]) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """Order id -> every trackTransaction the emulator received for it, with the position of its
    document in arrival order (`state` is the emulator's /_emulator/state with members)."""
    out: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for position, document in enumerate(state["eventDocuments"]):
        for event in document["events"]:
            if event["event"] == "trackTransaction":
                out[event["id"]].append((position, event))
    return out


# ------------------------------------------------------------------------------------- the streams


class EngageTraffic:
    """Engage audience messages (track Audience Entered/Exited, identify with computed traits) and
    consent updates, for the webhook source. Request k, people `{name}-{k}-{i}`:

    i=0 enters audience(k) for good; i=1 enters audience(k+1), withdraws consent at k+5 and, for
    even k, gives it back at k+9; i=2 enters audience(k+2) and leaves at k+3; i=3 enters audience(k)
    and audience(k+1) and leaves audience(k+1) at k+4.
    """

    def __init__(self, name: str, t0: float) -> None:
        self.name, self.t0 = name, t0

    def person(self, k: int, i: int) -> str:
        return f"{self.name}-{k}-{i}"

    def request(self, k: int) -> Request:
        out = Request()
        ts = self.t0 + k
        self._track(out, k, 0, audience(k), True, ts)
        self._identify(out, k, 1, audience(k + 1), True, ts)
        self._track(out, k, 2, audience(k + 2), True, ts)
        self._identify(out, k, 3, audience(k), True, ts)
        self._track(out, k, 3, audience(k + 1), True, ts)
        if k >= 3:
            self._identify(out, k - 3, 2, audience(k - 3 + 2), False, ts)
        if k >= 4:
            self._track(out, k - 4, 3, audience(k - 4 + 1), False, ts)
        if k >= 5:
            self._consent(out, self.person(k - 5, 1), False, ts, f"{k}-off")
        if k >= 9 and (k - 9) % 2 == 0:
            self._consent(out, self.person(k - 9, 1), True, ts, f"{k}-on")
        return out

    def _who(self, out: Request, k: int, i: int) -> tuple[str, str]:
        person = self.person(k, i)
        out.identifiers.append((person, "email", sha256(email(person))))
        return person, email(person)

    def _track(self, out: Request, k: int, i: int, name: str, member: bool, ts: float) -> None:
        person, address = self._who(out, k, i)
        out.memberships.append((person, name, ts, member))
        out.messages.append(
            {
                "type": "track",
                "event": "Audience Entered" if member else "Audience Exited",
                "userId": person,
                "messageId": f"{person}-{name}-{'in' if member else 'out'}",
                "timestamp": iso(ts),
                "properties": {"audience_key": name, name: member},
                "context": {"traits": {"email": address}, **personas(name)},
            }
        )

    def _identify(self, out: Request, k: int, i: int, name: str, member: bool, ts: float) -> None:
        person, address = self._who(out, k, i)
        out.memberships.append((person, name, ts, member))
        out.messages.append(
            {
                "type": "identify",
                "userId": person,
                "messageId": f"{person}-{name}-{'in' if member else 'out'}-identify",
                "timestamp": iso(ts),
                "traits": {"email": address, name: member},
                "context": personas(name),
            }
        )

    def _consent(self, out: Request, person: str, consents: bool, ts: float, tag: str) -> None:
        out.consents.append((person, ts, consents))
        out.messages.append(
            {
                "type": "track",
                "event": CONSENT_EVENT,
                "userId": person,
                "messageId": f"{person}-consent-{tag}",
                "timestamp": iso(ts),
                "context": {"consent": {"categoryPreferences": {"Advertising": consents}}},
            }
        )


class TrackingTraffic:
    """What a shop's backend sends through Segment's Python library. Request k, people `{name}-{k}-{i}`:

    i=0 (email and mobile advertising id) enters audience(k) for good; i=1 places order `{name}-{k}`;
    i=2 (email and madid) enters audience(k+1) and leaves at k+2; i=3 enters audience(k+2) and
    withdraws consent at k+4.
    """

    def __init__(self, name: str, t0: float) -> None:
        self.name, self.t0 = name, t0
        self.client = Client("unused", send=False)  # builds messages only; TrackingSender sends them

    def person(self, k: int, i: int) -> str:
        return f"{self.name}-{k}-{i}"

    def request(self, k: int) -> Request:
        out = Request()
        ts = self.t0 + k
        self._enter(out, self.person(k, 0), audience(k), ts, with_madid=True)
        self._order(out, self.person(k, 1), f"{self.name}-{k}", ts)
        self._enter(out, self.person(k, 2), audience(k + 1), ts, with_madid=True)
        self._enter(out, self.person(k, 3), audience(k + 2), ts, with_madid=False)
        if k >= 2:
            self._membership(out, self.person(k - 2, 2), audience(k - 2 + 1), False, ts)
        if k >= 4:
            person = self.person(k - 4, 3)
            out.consents.append((person, ts, False))
            context = {"consent": {"categoryPreferences": {"Advertising": False}}}
            self._track(out, person, CONSENT_EVENT, {}, context, ts, f"{person}-c")
        return out

    @staticmethod
    def _at(ts: float) -> datetime:
        return datetime.fromtimestamp(ts, UTC)

    def _track(
        self,
        out: Request,
        person: str,
        event: str,
        properties: dict[str, Any],
        context: dict[str, Any],
        ts: float,
        message_id: str,
    ) -> None:
        _, message = self.client.track(person, event, properties, context, self._at(ts), message_id=message_id)
        out.messages.append(message)

    def _identify(self, out: Request, person: str, ts: float, *, with_madid: bool) -> None:
        out.identifiers.append((person, "email", sha256(email(person))))
        context: dict[str, Any] = {}
        if with_madid:
            out.identifiers.append((person, "madid", madid(person)))
            context["device"] = {"advertisingId": madid(person), "adTrackingEnabled": True}
        traits = {"email": email(person)}
        _, message = self.client.identify(person, traits, context, self._at(ts), message_id=f"{person}-i")
        out.messages.append(message)

    def _enter(self, out: Request, person: str, name: str, ts: float, *, with_madid: bool) -> None:
        self._identify(out, person, ts, with_madid=with_madid)
        self._membership(out, person, name, True, ts)

    def _membership(self, out: Request, person: str, name: str, member: bool, ts: float) -> None:
        out.memberships.append((person, name, ts, member))
        event = "Audience Entered" if member else "Audience Exited"
        properties = {"audience_key": name, name: member}
        self._track(out, person, event, properties, personas(name), ts, f"{person}-{name}-{'in' if member else 'out'}")

    def _order(self, out: Request, person: str, order_id: str, ts: float) -> None:
        self._identify(out, person, ts, with_madid=False)
        out.orders.append(order_id)
        product = {"product_id": "SOCK-1", "sku": "SKU-SOCK-1", "name": "Socks", "price": 12.5, "quantity": 2}
        properties = {"order_id": order_id, "revenue": 25.0, "currency": "EUR", "products": [product]}
        self._track(out, person, "Order Completed", properties, {}, ts, order_id)


# ------------------------------------------------------------------------------------------ senders


@dataclass
class Tally:
    """What the senders did (shared by their threads)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    attempts: int = 0
    retries: int = 0
    given_up: int = 0  # times Segment's library gave up on a batch (it was sent again)

    def count(self, attempts: int = 0, retries: int = 0, given_up: int = 0) -> None:
        with self.lock:
            self.attempts += attempts
            self.retries += retries
            self.given_up += given_up


class SendTimeout(Exception):
    """A request was not acknowledged before the sender's deadline."""


class _CountingConsumer(Consumer):  # type: ignore[misc]
    """Segment's consumer, never started: its `request` uploads one batch with the library's retries.
    Each retry waits through `_wait` (the first one for 0 s), which is where they are counted."""

    def __init__(self, host: str, write_key: str, tally: Tally, max_retries: int) -> None:
        super().__init__(queue.Queue(), write_key, host=host, gzip=True, retries=max_retries)
        self.tally = tally

    def _wait(self, seconds: float) -> bool:
        self.tally.count(attempts=1, retries=1)
        return bool(super()._wait(seconds))


class TrackingSender:
    def __init__(self, host: str, write_key: str, tally: Tally, deadline: float, *, max_retries: int = 10) -> None:
        self.consumer = _CountingConsumer(host, write_key, tally, max_retries)
        self.tally, self.deadline = tally, deadline

    def send(self, messages: list[dict[str, Any]]) -> None:
        for attempt in itertools.count():
            if time.monotonic() > self.deadline:
                raise SendTimeout(f"Tracking API batch not acknowledged ({messages[0]['messageId']})")
            self.tally.count(attempts=1, retries=min(attempt, 1))
            try:
                self.consumer.request(messages)
                return
            except APIError as error:
                if getattr(error, "rate_limited", False):  # 429 with Retry-After: wait as the library does
                    time.sleep(parse_retry_after(error.response) or 1.0)
                elif error.status < 500:
                    raise  # not retried by the library: the batch would be dropped, a bug here
                else:
                    self.tally.count(given_up=1)
            except Exception:
                self.tally.count(given_up=1)  # network errors through all the library's retries

    def close(self) -> None:
        pass  # the library's HTTP session is its module's own


class WebhookSender:
    def __init__(self, url: str, secret: str, tally: Tally, deadline: float, rng: random.Random) -> None:
        self.url, self.secret, self.tally, self.deadline, self.rng = url, secret, tally, deadline, rng
        self.http = httpx.Client(timeout=WEBHOOK_TIMEOUT_SECS)

    def send(self, messages: list[dict[str, Any]]) -> None:
        elements = [orjson.dumps(m) for m in messages]
        body = b"[" + b",".join(elements) + b"]"
        headers = {
            "X-Signature": hmac.new(self.secret.encode(), elements[0], hashlib.sha1).hexdigest(),
            "Content-Type": "application/json",
            "User-Agent": "Segment (Actions)",
        }
        first, cap = WEBHOOK_BACKOFF_SECS
        for attempt in range(1_000_000):
            if time.monotonic() > self.deadline:
                raise SendTimeout(f"webhook array not acknowledged ({messages[0]['messageId']})")
            self.tally.count(attempts=1, retries=min(attempt, 1))
            try:
                status = self.http.post(self.url, content=body, headers=headers).status_code
            except httpx.HTTPError:
                status = None
            if status == 200:
                return
            if status is not None and status < 500 and status not in WEBHOOK_RETRYABLE:
                raise AssertionError(f"webhook answered {status}, which Segment does not retry")
            time.sleep(self.rng.uniform(0, min(cap, first * 2**attempt)))  # the backoff, not synchronisation

    def close(self) -> None:
        self.http.close()


def run_stream(
    traffic: EngageTraffic | TrackingTraffic,
    sender: TrackingSender | WebhookSender,
    expected: Expected,
    *,
    stop: threading.Event,
    requests: int | None,
    failures: list[BaseException],
    pace_secs: float = 0.0,
) -> None:
    """A sender thread's body: requests 0, 1, 2… each until acknowledged, until `stop` (or `requests`),
    one every `pace_secs` at most.

    A request counts in `expected` once it is acknowledged. Failures go to `failures`."""
    try:
        k = 0
        due = time.monotonic()
        while not stop.is_set() and (requests is None or k < requests):
            request = traffic.request(k)
            sender.send(request.messages)
            expected.add(request)
            k += 1
            due = max(due + pace_secs, time.monotonic())  # no burst to catch up after an outage
            stop.wait(max(0.0, due - time.monotonic()))  # pacing the load, not synchronising
    except BaseException as exc:  # reported by the main thread
        failures.append(exc)
