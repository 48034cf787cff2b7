"""Everything the Criteo emulator remembers, behind one lock: segments and their members, Events API
documents, catalogs per merchant with their batch reports, tokens, calls, rate limits and faults.

The app runs on uvicorn's event loop while a test reads the same state from its own thread, so every
public method takes the lock and the accessors hand out copies. Time comes from an injected Clock:
with a FakeClock a test expires tokens and empties the rate-limit window without sleeping.
"""

from __future__ import annotations

import copy
import itertools
import json
import secrets
import threading
from collections import Counter, deque
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import parse_qs

from segcrit.clock import Clock, SystemClock
from segcrit.criteo.constants import (
    EVENTS_RATE_LIMIT_PER_MINUTE_DEFAULT,
    RATE_LIMIT_PER_MINUTE_DEFAULT,
    TOKEN_LIFETIME_SECS,
    IdentifierType,
)
from segcrit.emulator.faults import FaultInjector, Faults, parse_faults
from segcrit.emulator.ratelimit import RateDecision, SlidingWindowLimiter

DuplicateNameMode = Literal["warning", "error"]
DUPLICATE_NAME_MODES: tuple[DuplicateNameMode, ...] = ("warning", "error")
SegmentKind = Literal["ContactList", "Lookalike"]
TokenStatus = Literal["valid", "expired", "invalid"]

DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"
DEMO_ADVERTISER_ID = "12345"
# The log keeps the latest calls with their bodies (up to ~3.5 MB each); counters count every call.
CALL_LOG_SIZE = 1_000
FIRST_SEGMENT_ID = 1001
# Accepted Events API documents kept for assertions (the demo's run stays far below).
EVENT_LOG_SIZE = 10_000
# The key of the Events API host in its own rate limiter: the host is limited as a whole.
EVENTS_RATE_KEY = "events-api"
# "The report is available for 4 days" (ReportOkResponse in Criteo's preview OpenAPI).
REPORT_RETENTION_SECS = 4 * 86_400
# Report polls answered ACCEPTED / IN_PROGRESS before the final status, unless configured.
CATALOG_REPORT_POLLS_DEFAULT = 1


class Endpoint(StrEnum):
    """Names of the emulated endpoints, as used by the call log and `EmulatorState.calls()`."""

    @property
    def changes_state(self) -> bool:
        """Whether a call to it changes what Criteo holds (so that its answer can be lost)."""
        return self in _CHANGING

    TOKEN = "token"
    SEARCH = "search"
    CREATE = "create"
    DELETE = "delete"
    CONTACT_LIST_PATCH = "contact-list-patch"
    CONTACT_LIST_DELETE = "contact-list-delete"
    STATISTICS = "statistics"
    EVENTS = "events"
    CATALOG_BATCH = "catalog-batch"
    CATALOG_REPORT = "catalog-report"


_CHANGING = frozenset(
    {
        Endpoint.CREATE,
        Endpoint.DELETE,
        Endpoint.CONTACT_LIST_PATCH,
        Endpoint.CONTACT_LIST_DELETE,
        Endpoint.EVENTS,
        Endpoint.CATALOG_BATCH,
    }
)


@dataclass(frozen=True)
class ClientApp:
    """A Criteo application: its credentials and the advertisers it has consent for."""

    client_id: str
    client_secret: str
    advertiser_ids: frozenset[str]


@dataclass(frozen=True)
class CallRecord:
    at: float
    method: str
    path: str
    endpoint: str
    status: int
    client_id: str | None
    # Raw bytes, parsed on demand: a 50,000-identifier body costs half as much kept this way,
    # and the hot path does not parse it twice. The token form arrives here with its secret masked.
    body: bytes = field(repr=False)

    @property
    def request(self) -> Any:
        """The body as JSON (a token form as a dict); None when empty, text when not JSON."""
        if not self.body.strip():
            return None
        if self.endpoint == Endpoint.TOKEN:
            return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8", "replace")).items()}
        try:
            return json.loads(self.body)
        except ValueError:
            return self.body.decode("utf-8", "replace")


@dataclass
class Segment:
    """A segment as the emulator keeps it; `members` only for contact lists, per identifier type."""

    id: str
    advertiser_id: str
    name: str
    kind: SegmentKind
    created_at: float
    updated_at: float
    description: str | None = None
    seed_segment_id: str | None = None
    target_size: int | None = None
    members: dict[IdentifierType, set[str]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(values) for values in self.members.values())

    def copy(self) -> Segment:
        return replace(self, members={kind: set(values) for kind, values in self.members.items()})

    def to_json(self, include_members: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "advertiserId": self.advertiser_id,
            "name": self.name,
            "type": self.kind,
            "description": self.description,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
            "size": self.size,
        }
        if self.kind == "Lookalike":
            body["lookalike"] = {"seedSegmentId": self.seed_segment_id, "targetSize": self.target_size}
        if include_members:
            body["members"] = {kind: sorted(values) for kind, values in self.members.items()}
        return body


@dataclass
class _Token:
    client_id: str
    expires_at: float


@dataclass
class CatalogBatch:
    """A catalog batch as the emulator keeps it: processed at once, its report revealed after polls."""

    token: str
    submitted_at: float
    entries: int
    pending_polls: int  # polls still to answer ACCEPTED / IN_PROGRESS
    final_report: dict[str, Any] = field(repr=False)
    polls: int = 0


def iso(timestamp: float) -> str:
    """ISO-8601 UTC, as Criteo writes createdAt/updatedAt."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class EmulatorState:
    """Clients, tokens, segments with their members, the call log, rate limit and faults."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        clients: Iterable[ClientApp] | None = None,
        faults: Faults | str | None = None,
        rate_limit_per_minute: int = RATE_LIMIT_PER_MINUTE_DEFAULT,
        duplicate_name_mode: DuplicateNameMode = "warning",
        match_rate: float = 1.0,
        decommissioned_versions: Iterable[str] = (),
        call_log_size: int = CALL_LOG_SIZE,
        events_rate_limit_per_minute: int = EVENTS_RATE_LIMIT_PER_MINUTE_DEFAULT,
        events_redirect_hops: int = 0,
        catalog_report_polls: int = CATALOG_REPORT_POLLS_DEFAULT,
    ) -> None:
        self.lock = threading.RLock()
        self.clock: Clock = clock or SystemClock()
        default = ClientApp(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, frozenset({DEMO_ADVERTISER_ID}))
        self._clients = {c.client_id: c for c in (clients if clients is not None else [default])}
        self.duplicate_name_mode = duplicate_name_mode
        self.match_rate = match_rate  # share of identifiers the statistics call reports as matched
        self.decommissioned_versions = frozenset(decommissioned_versions)  # answered 410 Gone
        self._limiter = SlidingWindowLimiter(rate_limit_per_minute)
        self._faults = FaultInjector()
        self._initial_faults = faults
        self._tokens: dict[str, _Token] = {}
        self._segments: dict[str, Segment] = {}
        self._ids = itertools.count(FIRST_SEGMENT_ID)
        self._calls: deque[CallRecord] = deque(maxlen=call_log_size)
        self._call_counts: Counter[str] = Counter()
        self._status_counts: Counter[str] = Counter()  # answers by status code (a 429 is the budget's)
        # Request keys the emulator's schemas do not know (see `schemas`), as (path, key).
        self._unknown_keys: deque[tuple[str, str]] = deque(maxlen=call_log_size)
        # Events API: its own limiter (a separate host), redirects before the document is read.
        self._events_limiter = SlidingWindowLimiter(events_rate_limit_per_minute)
        self.events_redirect_hops = events_redirect_hops  # 307s answered before one is accepted
        self._event_documents: deque[dict[str, Any]] = deque(maxlen=EVENT_LOG_SIZE)
        self._event_counts: Counter[str] = Counter()
        # Catalog: products per merchant id, batches by operation token.
        self.catalog_report_polls = catalog_report_polls
        self._catalogs: dict[str, dict[str, dict[str, Any]]] = {}
        self._batches: dict[str, CatalogBatch] = {}
        self.set_faults(faults)

    # --- settings ---------------------------------------------------------------------------------

    @property
    def rate_limit_per_minute(self) -> int:
        return self._limiter.limit

    @rate_limit_per_minute.setter
    def rate_limit_per_minute(self, limit: int) -> None:
        with self.lock:
            self._limiter.limit = limit

    @property
    def events_rate_limit_per_minute(self) -> int:
        return self._events_limiter.limit

    @events_rate_limit_per_minute.setter
    def events_rate_limit_per_minute(self, limit: int) -> None:
        with self.lock:
            self._events_limiter.limit = limit

    @property
    def faults(self) -> Faults:
        with self.lock:
            return replace(self._faults.faults)

    def set_faults(self, faults: Faults | str | None) -> None:
        """Replace the faults in force (a Faults, or a spec string as for `--faults`)."""
        parsed = faults if isinstance(faults, Faults) else parse_faults(faults)
        with self.lock:
            if self._faults.apply(parsed):
                self.revoke_tokens()

    def add_client(self, client_id: str, client_secret: str, advertiser_ids: Iterable[str]) -> None:
        with self.lock:
            self._clients[client_id] = ClientApp(client_id, client_secret, frozenset(advertiser_ids))

    def reset(self) -> None:
        """Forget segments, event documents, catalogs, tokens, calls and rate-limit windows; faults go
        back to those given at start."""
        with self.lock:
            self._tokens.clear()
            self._segments.clear()
            self._ids = itertools.count(FIRST_SEGMENT_ID)
            self._calls.clear()
            self._call_counts.clear()
            self._status_counts.clear()
            self._unknown_keys.clear()
            self._limiter.reset()
            self._events_limiter.reset()
            self._event_documents.clear()
            self._event_counts.clear()
            self._catalogs.clear()
            self._batches.clear()
            self._faults = FaultInjector()
            self.set_faults(self._initial_faults)

    # --- test-facing accessors (copies, safe to keep) -------------------------------------------

    def segments(self, advertiser_id: str | None = None) -> list[Segment]:
        """Copies of the segments, by id."""
        with self.lock:
            found = self._segments_of({advertiser_id} if advertiser_id else None)
            return [segment.copy() for segment in found]

    def segment(self, name_or_id: str) -> Segment:
        """A copy of one segment, by id or else by name; KeyError when none or ambiguous."""
        with self.lock:
            return self._lookup(name_or_id).copy()

    def members(self, name_or_id: str, identifier_type: IdentifierType | None = None) -> set[str]:
        """The identifiers in a contact list (of one type, or of all)."""
        with self.lock:
            members = self._lookup(name_or_id).members
            if identifier_type is not None:
                return set(members.get(identifier_type, ()))
            return set().union(*members.values())

    def calls(self, endpoint: str | None = None) -> list[CallRecord]:
        """The latest calls (up to `call_log_size`), oldest first, optionally of one endpoint."""
        with self.lock:
            return [call for call in self._calls if endpoint is None or call.endpoint == endpoint]

    def call_counts(self) -> dict[str, int]:
        """Calls per endpoint since the start (or the last reset)."""
        with self.lock:
            return dict(self._call_counts)

    def event_documents(self) -> list[dict[str, Any]]:
        """The Events API documents accepted (the latest EVENT_LOG_SIZE), oldest first, as sent."""
        with self.lock:
            return copy.deepcopy(list(self._event_documents))

    def events(self, event_name: str | None = None) -> list[dict[str, Any]]:
        """The events of the accepted documents, in order, optionally of one name (`trackTransaction`)."""
        return [
            event
            for document in self.event_documents()
            for event in document.get("events", [])
            if event_name is None or event.get("event") == event_name
        ]

    def transactions(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The first trackTransaction per (account, order id): what Criteo counts as conversions.

        `len(state.events("trackTransaction"))` counts every one sent, duplicates included.
        """
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for document in self.event_documents():
            for event in document.get("events", []):
                if event.get("event") == "trackTransaction":
                    found.setdefault((str(document.get("account")), str(event.get("id"))), event)
        return found

    def catalog(self, merchant_id: str | int) -> dict[str, dict[str, Any]]:
        """A merchant's products by id (copies of the last inserted version)."""
        with self.lock:
            return copy.deepcopy(self._catalogs.get(str(merchant_id), {}))

    def snapshot(self, include_members: bool = True) -> dict[str, Any]:
        """The JSON of GET /_emulator/state (members, event documents and products with `include_members`)."""
        with self.lock:
            body: dict[str, Any] = {
                "segments": [s.to_json(include_members) for s in self._segments_of(None)],
                "calls": dict(self._call_counts),
                "statuses": dict(self._status_counts),
                "faults": self._faults.faults.to_json(),
                "duplicateNameMode": self.duplicate_name_mode,
                "rateLimitPerMinute": self._limiter.limit,
                "events": {
                    "documents": len(self._event_documents),
                    "byName": dict(self._event_counts),
                    "rateLimitPerMinute": self._events_limiter.limit,
                    "redirectHops": self.events_redirect_hops,
                },
                "catalog": {
                    merchant: {"products": len(products)} for merchant, products in sorted(self._catalogs.items())
                },
                "catalogBatches": len(self._batches),
                "catalogReportPolls": self.catalog_report_polls,
            }
            if include_members:
                body["eventDocuments"] = copy.deepcopy(list(self._event_documents))
                for merchant, products in self._catalogs.items():
                    body["catalog"][merchant]["items"] = copy.deepcopy(products)
            return body

    def create_segment(
        self,
        name: str,
        advertiser_id: str = DEMO_ADVERTISER_ID,
        members: dict[IdentifierType, Iterable[str]] | None = None,
    ) -> str:
        """Set up a contact-list segment directly (as if made in Criteo's UI); returns its id."""
        with self.lock:
            segment = self.add_segment(advertiser_id, name, "ContactList")
            for kind, values in (members or {}).items():
                segment.members.setdefault(kind, set()).update(values)
            return segment.id

    # --- primitives used by the app (callers on the event loop; each takes the lock) -------------

    def client(self, client_id: str) -> ClientApp | None:
        with self.lock:
            return self._clients.get(client_id)

    def issue_token(self, client_id: str) -> str:
        """A new bearer token for a known client; valid TOKEN_LIFETIME_SECS unless token_ttl says less."""
        with self.lock:
            ttl = self._faults.faults.token_ttl_secs
            lifetime = TOKEN_LIFETIME_SECS if ttl is None else ttl
            value = secrets.token_urlsafe(32)
            self._tokens[value] = _Token(client_id, self.clock.now() + lifetime)
            return value

    def check_token(self, value: str) -> tuple[TokenStatus, ClientApp | None]:
        with self.lock:
            token = self._tokens.get(value)
            if token is None:
                return "invalid", None
            client = self._clients.get(token.client_id)
            if self.clock.now() >= token.expires_at:
                return "expired", client
            return ("valid", client) if client is not None else ("invalid", None)

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (401 authorization-token-invalid)."""
        with self.lock:
            self._tokens.clear()

    def admit_call(self, client_id: str) -> RateDecision:
        with self.lock:
            return self._limiter.admit(client_id, self.clock.now())

    def admit_event_call(self) -> RateDecision:
        """Count a call to the Events API host against its own limit (not the Marketing API's)."""
        with self.lock:
            return self._events_limiter.admit(EVENTS_RATE_KEY, self.clock.now())

    def record_event_document(self, document: dict[str, Any]) -> None:
        with self.lock:
            self._event_documents.append(copy.deepcopy(document))
            for event in document.get("events", []):
                self._event_counts[str(event.get("event"))] += 1

    def submit_catalog_batch(
        self,
        upserts: Iterable[tuple[str, dict[str, Any]]],
        deletes: Iterable[tuple[str, str]],
        final_report: dict[str, Any],
        entries: int,
    ) -> str:
        """Apply a validated batch at once ((merchant, product) upserts, (merchant, id) deletes) and
        keep its report; returns the operation token."""
        with self.lock:
            for merchant, product in upserts:
                self._catalogs.setdefault(merchant, {})[str(product["id"])] = copy.deepcopy(product)
            for merchant, product_id in deletes:
                self._catalogs.get(merchant, {}).pop(product_id, None)
            self._forget_old_batches()
            token = secrets.token_urlsafe(32)
            self._batches[token] = CatalogBatch(
                token=token,
                submitted_at=self.clock.now(),
                entries=entries,
                pending_polls=self.catalog_report_polls,
                final_report=copy.deepcopy(final_report),
            )
            return token

    def poll_catalog_report(self, token: str) -> tuple[CatalogBatch, dict[str, Any] | None] | None:
        """One poll of a batch's report: the batch and its final report once the pending polls are
        used up (None before), or None for an unknown or expired token."""
        with self.lock:
            self._forget_old_batches()
            batch = self._batches.get(token)
            if batch is None:
                return None
            batch.polls += 1
            if batch.pending_polls > 0:
                batch.pending_polls -= 1
                return replace(batch), None
            return replace(batch), copy.deepcopy(batch.final_report)

    def rate_headers(self, client_id: str | None) -> RateDecision:
        with self.lock:
            return self._limiter.peek(client_id, self.clock.now())

    def take_burst_429(self) -> bool:
        with self.lock:
            return self._faults.take_burst_429()

    def take_server_error(self) -> int | None:
        with self.lock:
            return self._faults.take_server_error()

    def take_lost_answer(self) -> int | None:
        with self.lock:
            return self._faults.take_lost_answer()

    def latency_secs(self) -> float:
        with self.lock:
            return self._faults.faults.latency_ms / 1000

    def note_unknown_keys(self, path: str, keys: Iterable[str]) -> None:
        """Keys of a request to `path` that Criteo's schema does not have (tolerated, as Criteo does)."""
        with self.lock:
            self._unknown_keys.extend((path, key) for key in keys)

    def unknown_keys(self, *, clear: bool = False) -> list[tuple[str, str]]:
        """(request path, key) of every request key the emulator's schemas did not know: a request
        Criteo would have taken without the key meaning anything (see `schemas`); `clear` forgets
        them once read."""
        with self.lock:
            noted = list(self._unknown_keys)
            if clear:
                self._unknown_keys.clear()
            return noted

    def record_call(self, record: CallRecord) -> None:
        with self.lock:
            self._calls.append(record)
            self._call_counts[record.endpoint] += 1
            self._status_counts[str(record.status)] += 1

    def find_segment(self, segment_id: str) -> Segment | None:
        with self.lock:
            return self._segments.get(segment_id)

    def segments_of(self, advertiser_ids: AbstractSet[str]) -> list[Segment]:
        """The live segments of these advertisers, by numeric id (the order search pages in)."""
        with self.lock:
            return self._segments_of(advertiser_ids)

    def name_taken(self, advertiser_id: str, name: str) -> bool:
        # Case-sensitive, per advertiser (an assumption: Criteo does not say).
        with self.lock:
            return any(s.advertiser_id == advertiser_id and s.name == name for s in self._segments.values())

    def add_segment(
        self,
        advertiser_id: str,
        name: str,
        kind: SegmentKind,
        *,
        description: str | None = None,
        seed_segment_id: str | None = None,
        target_size: int | None = None,
    ) -> Segment:
        with self.lock:
            now = self.clock.now()
            segment = Segment(
                id=str(next(self._ids)),
                advertiser_id=advertiser_id,
                name=name,
                kind=kind,
                created_at=now,
                updated_at=now,
                description=description,
                seed_segment_id=seed_segment_id,
                target_size=target_size,
            )
            self._segments[segment.id] = segment
            return segment

    def delete_segment(self, segment_id: str) -> None:
        with self.lock:
            self._segments.pop(segment_id, None)

    def amend(
        self, segment: Segment, operation: Literal["add", "remove"], kind: IdentifierType, values: set[str]
    ) -> None:
        """add = set union, remove = set difference (removing a non-member is no error)."""
        with self.lock:
            members = segment.members.setdefault(kind, set())
            if operation == "add":
                members |= values
            else:
                members -= values
            segment.updated_at = self.clock.now()

    def wipe(self, segment: Segment) -> None:
        with self.lock:
            segment.members.clear()
            segment.updated_at = self.clock.now()

    # --- internals (lock held) ------------------------------------------------------------------

    def _forget_old_batches(self) -> None:
        cutoff = self.clock.now() - REPORT_RETENTION_SECS
        for token in [t for t, b in self._batches.items() if b.submitted_at <= cutoff]:
            del self._batches[token]

    def _segments_of(self, advertiser_ids: AbstractSet[str] | None) -> list[Segment]:
        found = [s for s in self._segments.values() if advertiser_ids is None or s.advertiser_id in advertiser_ids]
        return sorted(found, key=lambda s: int(s.id))

    def _lookup(self, name_or_id: str) -> Segment:
        if name_or_id in self._segments:
            return self._segments[name_or_id]
        named = [s for s in self._segments.values() if s.name == name_or_id]
        if len(named) != 1:
            problem = "no segment" if not named else f"{len(named)} segments"
            raise KeyError(f"{problem} named or numbered {name_or_id!r}")
        return named[0]
