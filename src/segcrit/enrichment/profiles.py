"""`type: segment_profiles` lookups: Segment's Profile API (reference/segment.md §9.1), one person
at a time, since the API has no batch read.

    GET {url}/v1/spaces/{space_id}/collections/users/profiles/user_id:{id}/external_ids?include=...
    GET {url}/v1/spaces/{space_id}/collections/users/profiles/user_id:{id}/traits?include=a,b

Basic auth with the access token as user and an empty password. Pages follow the `cursor.next`
cursor (a bounded number of them). At most `max_per_second` requests a second, as Segment counts
them (segcrit.enrichment.pacing; the API allows 100 per space). A 429 or a 5xx is retried with
full-jitter backoff (honouring `Retry-After`), a few times, before the batch's remaining people
are given up on as "source down" and the worker backs off as a whole; a 401/403 gives up at once
(a wrong token does not heal by retrying). A 404 means Segment knows no such person: an answer
like any other ("unknown"), cached until the next refresh. The ids in the URL are lower-cased and
URL-encoded, as Segment asks.

The client is aiohttp rather than httpx (which the Criteo client uses): at the API's 100 requests a
second, a request cost about 1.3 ms of CPU through httpx and 0.3 ms through aiohttp (measured on
loopback against the emulator), and that CPU is taken from ingest, which runs in the same process.

External id types become identifiers: `email`, `phone` (hashed like ingested ones), `ios.idfa`
and `android.idfa` (mobile advertising ids), `user_id` and `anonymous_id` (linking the person's
other ids). Consent is not in the Profile API.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson

from segcrit.clock import Clock
from segcrit.config import SegmentProfilesLookup
from segcrit.delivery.backoff import full_jitter
from segcrit.enrichment.answers import Answer, LookupResult, LookupUnavailable
from segcrit.enrichment.pacing import ArrivalWindowLimiter
from segcrit.metrics import Metrics
from segcrit.ratelimit import Sleep

log = logging.getLogger(__name__)

PROFILES_PATH: Final = "/v1/spaces/{space_id}/collections/users/profiles"
RATE_LIMIT_PER_SECOND: Final = 100  # per space, Segment's documented limit
# External id type -> identifier kind; `include=` asks for these only.
EXTERNAL_ID_KINDS: Final = {
    "email": "email",
    "phone": "phone",
    "ios.idfa": "madid",
    "android.idfa": "madid",
    "user_id": "user_id",
    "anonymous_id": "anonymous_id",
}
EXTERNAL_IDS_PAGE: Final = 100  # the API's largest page
TRAITS_PAGE: Final = 200
MAX_PAGES: Final = 5  # a person with more ids than this many pages hold is cut there
MAX_ATTEMPTS: Final = 4  # per request, for 429, 5xx and network errors
BACKOFF_INITIAL_SECS: Final = 0.5
BACKOFF_MAX_SECS: Final = 8.0
# Requests in flight at once: 100/s up to 80 ms of latency.
CONCURRENCY: Final = 8
MAX_BODY_BYTES: Final = 4 * 1024 * 1024  # an answer larger than this is not a page of the API


class _Down(LookupUnavailable):
    """This batch cannot go on: the token is refused, or the API keeps failing."""


def profile_path(key_kind: str, key: str) -> str:
    return f"{key_kind}:{quote(key.lower(), safe='')}"


def read_external_ids(items: Any, answer: Answer) -> None:
    """Add the identifiers of an `external_ids` page's `data` to `answer`."""
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        kind = EXTERNAL_ID_KINDS.get(str(item.get("type")))
        value = item["id"].strip()
        if not value or kind is None:
            continue
        if kind == "email":
            answer.emails.append(value)
        elif kind == "phone":
            answer.phones.append(value)
        elif (kind, value) not in answer.ids:
            answer.ids.append((kind, value))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers["retry-after"]))
    except (KeyError, ValueError):
        return None


class ProfilesSource:
    """One `type: segment_profiles` lookup: its HTTP client, rate limit and retries."""

    def __init__(
        self,
        lookup: SegmentProfilesLookup,
        clock: Clock,
        metrics: Metrics,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """Call inside the event loop that will run the lookups (aiohttp's session belongs to it)."""
        self.lookup = lookup
        self._metrics = metrics
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._base = lookup.url + PROFILES_PATH.format(space_id=lookup.space_id)
        token = base64.b64encode(f"{lookup.access_token.get_secret_value()}:".encode()).decode("ascii")
        self._http = aiohttp.ClientSession(
            headers={"Authorization": f"Basic {token}", "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=lookup.timeout_secs),
            connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            raise_for_status=False,
        )
        # Counted as Segment counts them, on arrival (segcrit.enrichment.pacing).
        self._pace = ArrivalWindowLimiter(lookup.max_per_second, clock, sleep)
        self._requests = 0
        self._down: str | None = None

    async def lookup_keys(self, keys: Sequence[str]) -> LookupResult:
        """Every key's answer; keys left unanswered when the API is down are `failed`. Raises
        LookupUnavailable when not one key got an answer."""
        self._requests, self._down = 0, None
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(key: str) -> Answer | None:
            async with gate:
                return await self._person(key)

        outcomes = await asyncio.gather(*(one(key) for key in keys), return_exceptions=True)
        result = LookupResult(requests=self._requests)
        for key, outcome in zip(keys, outcomes, strict=True):
            if isinstance(outcome, LookupUnavailable):
                result.failed.add(key)
                result.error = str(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            elif outcome is None:
                result.unknown.add(key)
            else:
                result.answers[key] = outcome
        if result.failed and not result.answers and not result.unknown:
            raise LookupUnavailable(result.error or "no answer")
        return result

    async def _person(self, key: str) -> Answer | None:
        """What the Profile API holds for one person; None when it knows no such person."""
        base = f"{self._base}/{profile_path(self.lookup.key, key)}"
        answer = Answer()
        if self.lookup.external_ids:
            include = ",".join(EXTERNAL_ID_KINDS)
            pages = await self._pages(f"{base}/external_ids", {"include": include, "limit": EXTERNAL_IDS_PAGE})
            if pages is None:
                return None
            for page in pages:
                read_external_ids(page.get("data"), answer)
        if self.lookup.traits:
            pages = await self._pages(f"{base}/traits", {"include": ",".join(self.lookup.traits), "limit": TRAITS_PAGE})
            if pages is None:
                return None
            for page in pages:
                traits = page.get("traits")
                if isinstance(traits, dict):
                    answer.traits.update({k: v for k, v in traits.items() if k in self.lookup.traits})
        return answer

    async def _pages(self, url: str, params: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The pages of one list, following `cursor.next`; None on 404."""
        pages: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            body = await self._get(url, params if cursor is None else {**params, "next": cursor})
            if body is None:
                return pages or None
            pages.append(body)
            more = body.get("cursor")
            if not isinstance(more, dict) or not more.get("has_more") or not isinstance(more.get("next"), str):
                break
            cursor = more["next"] or None
            if cursor is None:
                break
        return pages

    async def _get(self, url: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """One request, retried on 429, 5xx and network errors; None on 404."""
        problem = "no answer"
        for attempt in range(MAX_ATTEMPTS):
            if self._down is not None:
                raise _Down(self._down)
            self._requests += 1
            try:
                async with self._pace.slot():
                    status, headers, content = await self._fetch(url, params)
            except (aiohttp.ClientError, TimeoutError) as error:
                self._count("network")
                problem = f"network error ({error.__class__.__name__})"
                await self._sleep(full_jitter(attempt, BACKOFF_INITIAL_SECS, BACKOFF_MAX_SECS, self._rng))
                continue
            self._count(str(status))
            if status == 200:
                body = _json_object(content)
                if body is not None:
                    return body
                problem = "an answer that is not a JSON object"
            elif status == 404:
                return None
            elif status in (401, 403):
                self._down = f"the Profile API refused the access token ({status}); check access_token and space_id"
                raise _Down(self._down)
            elif status == 400:
                # The id itself is refused (characters the API does not take): nobody to find.
                log.warning("profile api refused an id", extra={"lookup": self.lookup.name, "status": status})
                return None
            elif status != 429 and status < 500:
                self._down = f"the Profile API answered {status}"
                raise _Down(self._down)
            else:
                problem = f"the Profile API answered {status}"
            delay = full_jitter(attempt, BACKOFF_INITIAL_SECS, BACKOFF_MAX_SECS, self._rng)
            wait = _retry_after(headers)
            await self._sleep(max(delay, min(wait, BACKOFF_MAX_SECS)) if wait is not None else delay)
        self._down = f"{problem}, {MAX_ATTEMPTS} times"
        raise _Down(self._down)

    async def _fetch(self, url: str, params: Mapping[str, Any]) -> tuple[int, Mapping[str, str], bytes | None]:
        """One GET: its status, headers and body (None when larger than MAX_BODY_BYTES). The body
        is read whatever the status, so that the connection is kept for the next request."""
        async with self._http.get(url, params=params, allow_redirects=False) as response:
            return response.status, response.headers, await _read_bounded(response.content, MAX_BODY_BYTES)

    def _count(self, status: str) -> None:
        self._metrics.lookup_requests.labels(self.lookup.name, status).inc()

    async def aclose(self) -> None:
        await self._http.close()


async def _read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body as it arrives, or None once it passes `limit` bytes."""
    blocks: list[bytes] = []
    size = 0
    while block := await stream.readany():
        size += len(block)
        if size > limit:
            return None
        blocks.append(block)
    return b"".join(blocks)


def _json_object(content: bytes | None) -> dict[str, Any] | None:
    if content is None:
        return None
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None
