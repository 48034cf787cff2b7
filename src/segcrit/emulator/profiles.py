"""Segment's Profile API, as `segcrit emulator` serves it beside Criteo (reference/segment.md §9.1):
the routes segcrit's `segment_profiles` lookups call, so that the demo and the tests run offline.

    GET /v1/spaces/{space_id}/collections/users/profiles/{type}:{value}/external_ids
        ?include=a,b&limit=1..100&next=CURSOR     -> {"data": [...], "cursor": {...}}
    GET /v1/spaces/{space_id}/collections/users/profiles/{type}:{value}/traits
        ?include=a,b&limit=1..200&next=CURSOR     -> {"traits": {...}, "cursor": {...}}

As Segment does: Basic auth with the space's access token as user (401 `authentication_error`
otherwise), 100 requests per second per space (429 `rate_limit_error`), 404 `not_found` for a
person it does not know, 400 `validation_error` for a bad id or limit, `Request-Id` on every
answer. Ids are matched in lower case, and a query is not
lower-cased for you (Segment's rule: query with the id in lower case).

Seeded from a JSON file (`segcrit emulator --profiles FILE`) or `POST /_emulator/profiles`:

    {"spaces": {"spa_demo": {"access_token": "...",
        "profiles": [{"external_ids": [{"type": "user_id", "id": "u1"}, {"type": "email", "id": "a@b.c"}],
                      "traits": {"lifetime_value": 1200}}]}}}

Controls (no auth): `GET /_emulator/profiles` (spaces, profile counts, every request's time and
status), `POST /_emulator/profiles` (replace the seed), `POST /_emulator/profiles/faults`
(`{"5xx": RATE}`: that share of requests answer 503; `{"5xx": 0}` heals).
"""

from __future__ import annotations

import base64
import binascii
import random
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from segcrit.clock import Clock, SystemClock
from segcrit.emulator.ratelimit import SlidingWindowLimiter
from segcrit.enrichment.profiles import PROFILES_PATH, RATE_LIMIT_PER_SECOND
from segcrit.errors import UserError

EXTERNAL_IDS_MAX_LIMIT: Final = 100
TRAITS_MAX_LIMIT: Final = 200
TRAITS_DEFAULT_LIMIT: Final = 10
REQUEST_LOG_SIZE: Final = 100_000


@dataclass
class _Space:
    access_token: str
    profiles: list[dict[str, Any]] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)  # "type:value", value lower-cased -> profile


def _space(raw: Any, space_id: str) -> _Space:
    if not isinstance(raw, dict) or not isinstance(raw.get("access_token"), str):
        raise ValueError(f"spaces.{space_id}: needs an access_token")
    space = _Space(raw["access_token"])
    for number, profile in enumerate(raw.get("profiles") or []):
        ids = profile.get("external_ids") if isinstance(profile, dict) else None
        if not isinstance(ids, list) or not ids:
            raise ValueError(f"spaces.{space_id}.profiles[{number}]: needs external_ids")
        traits = profile.get("traits") or {}
        if not isinstance(traits, dict):
            raise ValueError(f"spaces.{space_id}.profiles[{number}].traits: must be an object")
        stored = []
        for item in ids:
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("type"), str)
                or not isinstance(item.get("id"), str)
            ):
                raise ValueError(f"spaces.{space_id}.profiles[{number}].external_ids: each needs type and id")
            stored.append({"type": item["type"], "id": item["id"]})
            space.index[f"{item['type']}:{item['id'].lower()}"] = len(space.profiles)
        space.profiles.append({"external_ids": stored, "traits": dict(traits)})
    return space


class ProfileApiState:
    """The emulated Profile API's data, rate limit, faults and request log, behind one lock."""

    def __init__(
        self,
        seed: dict[str, Any] | None = None,
        *,
        clock: Clock | None = None,
        rate_limit_per_second: int = RATE_LIMIT_PER_SECOND,
    ) -> None:
        self.lock = threading.RLock()
        self.clock: Clock = clock or SystemClock()
        self._limiter = SlidingWindowLimiter(rate_limit_per_second, window_secs=1.0)
        self._spaces: dict[str, _Space] = {}
        self._requests: deque[tuple[float, str, int]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.error_rate = 0.0
        self._rng = random.Random(0)
        if seed is not None:
            self.load(seed)

    @classmethod
    def from_file(cls, path: Path) -> ProfileApiState:
        try:
            seed = orjson.loads(path.read_bytes())
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        except orjson.JSONDecodeError:
            raise UserError(f"{path}: not valid JSON") from None
        try:
            return cls(seed)
        except ValueError as exc:
            raise UserError(f"{path}: {exc}") from None

    def load(self, seed: dict[str, Any]) -> None:
        """Replace every space with those of `seed` (module docstring); ValueError when malformed."""
        spaces = seed.get("spaces") if isinstance(seed, dict) else None
        if not isinstance(spaces, dict):
            raise ValueError("the seed needs a `spaces` object")
        parsed = {space_id: _space(raw, space_id) for space_id, raw in spaces.items()}
        with self.lock:
            self._spaces = parsed

    def set_profile(self, space_id: str, external_ids: list[dict[str, str]], traits: dict[str, Any]) -> None:
        """Add a person, or replace the one that holds the first of `external_ids` (tests)."""
        with self.lock:
            space = self._spaces[space_id]
            first = f"{external_ids[0]['type']}:{external_ids[0]['id'].lower()}"
            stored = [{"type": i["type"], "id": i["id"]} for i in external_ids]
            if first in space.index:
                number = space.index[first]
                space.profiles[number] = {"external_ids": stored, "traits": dict(traits)}
            else:
                number = len(space.profiles)
                space.profiles.append({"external_ids": stored, "traits": dict(traits)})
            for item in stored:
                space.index[f"{item['type']}:{item['id'].lower()}"] = number

    def request_times(self, space_id: str | None = None) -> list[float]:
        """When each request arrived (whatever its answer), oldest first."""
        with self.lock:
            return [at for at, space, _ in self._requests if space_id is None or space == space_id]

    def request_statuses(self) -> list[int]:
        with self.lock:
            return [status for _, _, status in self._requests]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "spaces": {space_id: {"profiles": len(s.profiles)} for space_id, s in self._spaces.items()},
                "requests": [{"at": at, "space": space, "status": status} for at, space, status in self._requests],
                "faults": {"5xx": self.error_rate},
            }

    # ------------------------------------------------------------------ serving

    def answer(
        self, space_id: str, token: str | None, profile_id: str, resource: str, query: dict[str, str]
    ) -> Response:
        with self.lock:
            status, body = self._answer(space_id, token, profile_id, resource, query)
            self._requests.append((self.clock.now(), space_id, status))
        return JSONResponse(body, status_code=status, headers={"Request-Id": str(uuid.uuid4())})

    def _answer(
        self, space_id: str, token: str | None, profile_id: str, resource: str, query: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        space = self._spaces.get(space_id)
        if space is None or token is None or token != space.access_token:
            return _error(401, "authentication_error", "Failure to properly authenticate yourself in the request.")
        if not self._limiter.admit(space_id, self.clock.now()).allowed:
            return _error(429, "rate_limit_error", "Too many requests hit the API too quickly.")
        if self.error_rate and self._rng.random() < self.error_rate:
            return _error(503, "internal_error", "Service unavailable.")
        id_type, _, value = profile_id.partition(":")
        if not id_type or not value:
            return _error(400, "validation_error", "The profile id must be <id_type>:<value>.")
        top = EXTERNAL_IDS_MAX_LIMIT if resource == "external_ids" else TRAITS_MAX_LIMIT
        default = EXTERNAL_IDS_MAX_LIMIT if resource == "external_ids" else TRAITS_DEFAULT_LIMIT
        limit = _limit(query.get("limit"), default, top)
        if limit is None:
            return _error(400, "validation_error", f"The parameter `limit` must be between 1 and {top}.")
        number = space.index.get(f"{id_type}:{value}")
        if number is None:
            return _error(404, "not_found", "Profile was not found.")
        profile = space.profiles[number]
        include = {part for part in query.get("include", "").split(",") if part}
        if resource == "external_ids":
            items = [i for i in profile["external_ids"] if not include or i["type"] in include]
            data = [_external_id(item) for item in items]
            page, cursor = _page(data, query.get("next"), limit, f"{space_id}/{profile_id}/{resource}")
            return 200, {"data": page, "cursor": cursor}
        names = sorted(name for name in profile["traits"] if not include or name in include)
        page, cursor = _page(names, query.get("next"), limit, f"{space_id}/{profile_id}/{resource}")
        return 200, {"traits": {name: profile["traits"][name] for name in page}, "cursor": cursor}


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": code, "message": message}}


def _limit(raw: str | None, default: int, top: int) -> int | None:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 1 <= value <= top else None


def _external_id(item: dict[str, str]) -> dict[str, Any]:
    return {
        "source_id": "emulator",
        "collection": "users",
        "id": item["id"],
        "type": item["type"],
        "created_at": "2024-01-01T00:00:00Z",
        "encoding": "none",
    }


def _page(items: list[Any], cursor: str | None, limit: int, where: str) -> tuple[list[Any], dict[str, Any]]:
    """One page of `items` after `cursor` (an offset, as an opaque text)."""
    start = int(cursor) if cursor is not None and cursor.isdigit() else 0
    page = items[start : start + limit]
    more = start + limit < len(items)
    url = f"/v1/spaces/{where}"
    return page, {"url": url, "has_more": more, "next": str(start + limit) if more else "", "limit": limit}


def _basic_user(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, _password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user or None


def profile_routes(state: ProfileApiState) -> list[Route]:
    base = PROFILES_PATH.format(space_id="{space_id}") + "/{profile_id}/{resource}"

    async def serve(request: Request) -> Response:
        resource = request.path_params["resource"]
        if resource not in ("external_ids", "traits"):
            body = {"error": {"code": "not_found", "message": "Resource not found."}}
            return JSONResponse(body, status_code=404)
        return state.answer(
            request.path_params["space_id"],
            _basic_user(request),
            request.path_params["profile_id"],
            resource,
            dict(request.query_params),
        )

    async def get_state(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    async def seed(request: Request) -> Response:
        try:
            state.load(orjson.loads(await request.body()))
        except (orjson.JSONDecodeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(state.snapshot()["spaces"])

    async def faults(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            rate = float(body.get("5xx", 0.0))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return JSONResponse({"error": 'expected {"5xx": RATE} with RATE in 0..1'}, status_code=400)
        if not 0 <= rate <= 1:
            return JSONResponse({"error": "5xx must be in 0..1"}, status_code=400)
        with state.lock:
            state.error_rate = rate
        return JSONResponse({"5xx": rate})

    return [
        Route(base, serve, methods=["GET"]),
        Route("/_emulator/profiles", get_state, methods=["GET"]),
        Route("/_emulator/profiles", seed, methods=["POST"]),
        Route("/_emulator/profiles/faults", faults, methods=["POST"]),
    ]
