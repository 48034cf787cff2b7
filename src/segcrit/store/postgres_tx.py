"""PostgreSQL store, the unit of work (ProcessingTx, ChunkTx): locks, a read-ahead, batched writes.

Several processes apply events at once, so a unit of work first *locks* the people it changes:

- every profile it reads or changes is locked (`SELECT ... FOR UPDATE` on its `profiles` row)
  before anything of it is read, and stays locked until the commit: two processes never change
  one profile at the same time, and every write of a profile's identifiers, memberships,
  suppressions, consent and traits is made under that lock;
- an identifier nobody holds yet is locked by value (`pg_advisory_xact_lock` on a 64-bit hash of
  kind and value): two processes seeing one new person at once create one profile, the second
  finding it when the first commits.

A chunk takes these locks for all of its events at once (`hold_identifiers`, which the processor
calls before applying them): profiles in id order, then new identifiers in key order, so two
chunks never wait for each other in a cycle. A lock taken later (an identifier the processor did
not announce, a profile found by id in a scheduled job, a person merged away while we waited)
can meet a cycle; PostgreSQL then aborts one transaction and it is retried (StoreUnavailable).

Locked profiles are read whole, in one round trip per batch, and decided in memory; the unit of
work writes their final state when it ends (`flush`), a few multi-row statements per table. Writes
to rows that other processes change too are conditional SQL evaluated at that time, never a
decision taken on what was read earlier: `targets` (delivery claims and acknowledges them
meanwhile: a row is dropped only while it is neither wanted, nor held, nor claimed), products,
lookups, counters (deltas). Those rows are written in key order, as delivery writes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson
import psycopg
from psycopg import errors as pg_errors

from segcrit.domain import Identifier, InboxEvent, ProfileState, TargetKey
from segcrit.errors import StoreUnavailable
from segcrit.store.base import LAST_SEEN_SLACK_SECS
from segcrit.store.postgres_base import lock_keys

if TYPE_CHECKING:
    from segcrit.store.postgres import PostgresStore

Key = tuple[str, str]
NOT_HELD, HELD, UNKNOWN = 0, 1, 2
ID_BLOCK: Final = 1000  # profile ids reserved at a time (the sequence's increment, 0001_initial.sql)
_RESOLVE_ROUNDS: Final = 10
# The rows of `table` with these (kind, value) keys, one primary-key probe per key: a plain join
# with the arrays lets the planner hash the whole table (a sequential scan per chunk, its cost
# growing with the table); LIMIT 1 keeps the subquery apart, so the plan stays a probe per key.
_KEY_PROBES: Final = (
    "unnest(%s::text[], %s::text[]) AS k(kind, value) CROSS JOIN LATERAL (SELECT {column} FROM {table} i "
    "WHERE i.kind = k.kind AND i.value = k.value LIMIT 1) i"
)


@dataclass(slots=True)
class _Ident:
    profile_id: int
    extra: str | None
    active: bool
    active_ts: float


@dataclass(slots=True)
class _Profile:
    id: int
    created_at: float
    last_seen_at: float
    consent: int | None
    consent_ts: float | None
    traits: dict[str, Any] | None
    traits_ts: float | None
    keys: set[Key] = field(default_factory=set)
    memberships: dict[str, tuple[bool, float]] = field(default_factory=dict)
    suppressions: dict[str, tuple[float, float]] = field(default_factory=dict)
    # The profile's `targets` rows as read: key -> (desired, acked, dead-lettered). Only used to
    # skip a `set_targets` that changes nothing; the writes themselves are conditional.
    targets: dict[TargetKey, tuple[bool, int, bool]] = field(default_factory=dict)
    new: bool = False
    dirty: bool = False


class PgTx:
    """The unit of work of the processor and the scheduled jobs, on one connection inside one
    transaction (see the module docstring)."""

    def __init__(self, store: PostgresStore, conn: psycopg.Connection[Any], *, dry: bool = False) -> None:
        self.store = store
        self.conn = conn
        self.dry = dry  # always rolled back (preview): every write stays in its transaction
        self._owners: dict[Key, int | None] = {}  # None: nobody holds it (and we hold its lock)
        self._idents: dict[Key, _Ident] = {}
        self._profiles: dict[int, _Profile] = {}
        self._missing: set[int] = set()  # ids asked for that are not (or no longer) profiles
        self._locked_keys: set[Key] = set()
        self._free_ids: list[int] = []
        self._tombstones: dict[Key, float] = {}
        self._any_tombstone: bool | None = None
        # what `flush` writes
        self._ident_new: dict[Key, _Ident] = {}
        self._ident_changed: set[Key] = set()
        self._ident_deleted: set[Key] = set()
        self._gone: set[int] = set()  # profiles to delete
        self._memberships: dict[tuple[int, str], tuple[bool, float] | None] = {}
        self._suppressions: dict[tuple[int, str], tuple[float, float] | None] = {}
        self._target_ops: list[tuple[str, int, float]] = []  # ("merge", into, other) / ("erase", id, at)
        self._target_sets: dict[int, tuple[frozenset[TargetKey], float]] = {}
        self._events: list[tuple[str, int | None, bytes, bytes, float]] = []
        self._lookup_marks: dict[tuple[str, int], float] = {}
        self._orders: dict[str, tuple[int, float, float | None, str | None]] = {}
        self._counter_deltas: dict[str, int] = {}
        self._products: dict[tuple[str, str], tuple[bytes, str, str | None, float]] = {}
        self._product_rows: dict[tuple[str, str], tuple[dict[str, Any], str] | None] = {}

    # ------------------------------------------------------------------ locks and the read-ahead

    def hold_identifiers(self, idents: Iterable[tuple[str, str]]) -> None:
        """Lock these identifiers' profiles, and the identifiers nobody holds, all at once and in
        order (the processor names a chunk's identifiers before applying it); read the profiles."""
        keys = list(dict.fromkeys(idents))
        self._resolve(keys)
        if keys and self._has_tombstones():
            self._read_tombstones(keys)

    def _resolve(self, keys: Sequence[Key]) -> None:
        """Make every key's owner known and locked (or the key itself locked, when it has none)."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._owners]
        lock: list[Key] = []
        for _ in range(_RESOLVE_ROUNDS):
            if not todo:
                return
            found = self._query_owners(todo, lock_first=lock)
            self._locked_keys.update(lock)
            self._load(sorted({pid for pid in found.values() if pid not in self._profiles}))
            unowned = [k for k in todo if k not in found]
            lock = [k for k in unowned if k not in self._locked_keys]
            if lock:
                # Lock them, then look again: someone may give them an owner before we get the lock.
                todo = lock + [k for k in found if k not in self._owners]
                continue
            for key in unowned:
                self._owners.setdefault(key, None)
            # Found owned but not among the identifiers of the profile we locked: it moved (a merge
            # committed while we waited for the lock); look again.
            todo = [k for k in found if k not in self._owners]
        raise StoreUnavailable("store conflict: identifiers kept moving while they were locked")

    def _query_owners(self, keys: Sequence[Key], *, lock_first: Sequence[Key] = ()) -> dict[Key, int]:
        """The owners of these keys, after taking the advisory locks of `lock_first` (in key
        order); one round trip, the query a statement of its own so that it sees what was
        committed while the locks were awaited."""
        tombstones = None
        with self.conn.pipeline():
            if self._any_tombstone is None:  # `_has_tombstones`, asked in the same round trip
                tombstones = self.conn.execute("SELECT EXISTS (SELECT 1 FROM tombstones)")
            if lock_first:
                names = [f"identifier\x1f{kind}\x1f{value}" for kind, value in lock_first]
                self.conn.execute(
                    "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::int8[]) AS k",
                    (lock_keys(self.store.namespace, names),),
                )
            cursor = self.conn.execute(
                "SELECT k.kind, k.value, i.profile_id FROM "
                + _KEY_PROBES.format(table="identifiers", column="profile_id"),
                ([k[0] for k in keys], [k[1] for k in keys]),
            )
        if tombstones is not None:
            self._any_tombstone = tombstones.fetchone() == (True,)
        return {(r[0], r[1]): int(r[2]) for r in cursor.fetchall()}

    def _load(self, ids: Sequence[int]) -> None:
        """Lock these profiles (in id order) and read everything of them, in one round trip."""
        ids = [pid for pid in ids if pid not in self._profiles and pid not in self._missing]
        if not ids:
            return
        conn = self.conn
        with conn.pipeline():
            profiles = conn.execute(
                "SELECT id, created_at, last_seen_at, consent, consent_ts, traits, traits_ts FROM profiles "
                "WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                (ids,),
            )
            idents = conn.execute(
                "SELECT kind, value, profile_id, extra, active, active_ts FROM identifiers WHERE profile_id = ANY(%s)",
                (ids,),
            )
            members = conn.execute(
                "SELECT profile_id, audience, member, ts FROM memberships WHERE profile_id = ANY(%s)", (ids,)
            )
            suppressed = conn.execute(
                "SELECT profile_id, flow, since, until FROM suppressions WHERE profile_id = ANY(%s)", (ids,)
            )
            targets = conn.execute(
                "SELECT profile_id, audience, id_type, id_value, desired, acked, dead_letter_id IS NOT NULL "
                "FROM targets WHERE profile_id = ANY(%s)",
                (ids,),
            )
        loaded: dict[int, _Profile] = {}
        for r in profiles.fetchall():
            traits = orjson.loads(r[5]) if r[5] else None
            loaded[int(r[0])] = _Profile(int(r[0]), r[1], r[2], r[3], r[4], traits, r[6])
        self._missing.update(pid for pid in ids if pid not in loaded)
        # Rows read after the profiles were locked: nobody changes them until we commit.
        for kind, value, pid, extra, active, active_ts in idents.fetchall():
            profile = loaded.get(int(pid))
            if profile is None:
                continue
            key = (kind, value)
            profile.keys.add(key)
            self._idents[key] = _Ident(int(pid), extra, bool(active), float(active_ts))
            self._owners[key] = int(pid)
        for pid, audience, member, ts in members.fetchall():
            if pid in loaded:
                loaded[pid].memberships[audience] = (bool(member), float(ts))
        for pid, flow, since, until in suppressed.fetchall():
            if pid in loaded:
                loaded[pid].suppressions[flow] = (float(since), float(until))
        for pid, audience, id_type, id_value, desired, acked, dead in targets.fetchall():
            if pid in loaded:
                loaded[pid].targets[TargetKey(audience, id_type, id_value)] = (bool(desired), int(acked), bool(dead))
        self._profiles.update(loaded)

    def anonymous_unseen(self, ids: Sequence[int], unseen_since: float) -> list[int]:
        """Those of these profiles (locked and read now) known only by anonymousIds and not seen
        since `unseen_since` (retention.anonymous_profiles_days)."""
        self._load(sorted(ids))
        return [
            pid
            for pid in ids
            if (profile := self._profiles.get(pid)) is not None
            and profile.last_seen_at < unseen_since
            and all(kind == "anonymous_id" for kind, _ in profile.keys)
        ]

    def _profile(self, profile_id: int) -> _Profile | None:
        """The profile, locked and read (None when there is no such profile)."""
        profile = self._profiles.get(profile_id)
        if profile is None and profile_id not in self._missing and profile_id not in self._gone:
            self._load([profile_id])
            profile = self._profiles.get(profile_id)
        return profile

    # ---- identity

    def find_profiles(self, idents: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        keys = list(idents)
        self._resolve(keys)
        found: dict[Key, int] = {}
        for key in keys:
            owner = self._owners.get(key)
            if owner is not None:
                found[key] = owner
        return found

    def identifier_counts(self, profile_id: int) -> dict[str, int]:
        profile = self._profile(profile_id)
        counts: dict[str, int] = {}
        for kind, _ in profile.keys if profile else ():
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def create_profile(self, now: float) -> int:
        if not self._free_ids:
            # The sequence counts in blocks (INCREMENT BY ID_BLOCK): one call reserves ID_BLOCK ids.
            row = self.conn.execute("SELECT nextval(pg_get_serial_sequence('profiles', 'id'))").fetchone()
            assert row is not None
            first = int(row[0])
            self._free_ids = list(range(first + ID_BLOCK - 1, first - 1, -1))
        profile_id = self._free_ids.pop()
        self._profiles[profile_id] = _Profile(profile_id, now, now, None, None, None, None, new=True, dirty=True)
        return profile_id

    def touch_profile(self, profile_id: int, seen_at: float) -> None:
        profile = self._profile(profile_id)
        # Within the slack, only when the row is written anyway (store.base.LAST_SEEN_SLACK_SECS).
        slack = 0.0 if profile is not None and profile.dirty else LAST_SEEN_SLACK_SECS
        if profile is not None and seen_at > profile.last_seen_at + slack:
            profile.last_seen_at = seen_at
            profile.dirty = True

    def attach_identifier(self, profile_id: int, ident: Identifier, ts: float) -> None:
        key = (ident.kind, ident.value)
        self._resolve([key])
        profile = self._profile(profile_id)
        if self._owners.get(key) is not None or profile is None:
            return  # held already (by this profile or another): as ON CONFLICT DO NOTHING
        row = _Ident(profile_id, ident.extra, ident.active, ts)
        self._owners[key] = profile_id
        self._idents[key] = row
        profile.keys.add(key)
        if key in self._ident_deleted:  # erased and taken again in this unit of work
            self._ident_deleted.discard(key)
            self._ident_changed.add(key)
        else:
            self._ident_new[key] = row

    def set_identifier_active(self, kind: str, value: str, active: bool, ts: float) -> bool:
        key = (kind, value)
        self._resolve([key])
        row = self._idents.get(key)
        if row is None or self._owners.get(key) is None:
            return False
        if row.active_ts <= ts and row.active != active:
            row.active, row.active_ts = active, ts
            self._changed_ident(key)
            return True
        if row.active_ts < ts:
            row.active_ts = ts
            self._changed_ident(key)
        return False

    def _changed_ident(self, key: Key) -> None:
        if key not in self._ident_new:
            self._ident_changed.add(key)

    def merge_profiles(self, into: int, other: int) -> None:
        """Move everything of `other` to `into`; per audience and for consent the latest ts wins."""
        survivor, merged = self._profile(into), self._profile(other)
        if survivor is None or merged is None:
            return
        for key in merged.keys:
            self._idents[key].profile_id = into
            self._owners[key] = into
            survivor.keys.add(key)
            self._changed_ident(key)
        for audience, (member, ts) in merged.memberships.items():
            current = survivor.memberships.get(audience)
            if current is None or ts > current[1]:
                survivor.memberships[audience] = (member, ts)
                self._memberships[(into, audience)] = (member, ts)
            self._memberships[(other, audience)] = None
        if merged.consent_ts is not None and merged.consent is not None:
            self.set_consent(into, bool(merged.consent), merged.consent_ts)
        survivor.created_at = min(survivor.created_at, merged.created_at)
        survivor.last_seen_at = max(survivor.last_seen_at, merged.last_seen_at)
        survivor.dirty = True
        for flow, (since, until) in merged.suppressions.items():
            current_s = survivor.suppressions.get(flow)
            kept = (since, until) if current_s is None else (current_s[0], max(current_s[1], until))
            survivor.suppressions[flow] = kept
            self._suppressions[(into, flow)] = kept
            self._suppressions[(other, flow)] = None
        if merged.traits:
            self.merge_traits(into, merged.traits, merged.traits_ts or 0.0)
        survivor.targets.update(merged.targets)
        self._target_ops.append(("merge", into, float(other)))
        self._target_sets.pop(other, None)
        # Orders, waiting Events API events and lookups: rare enough to write at once.
        self._flush_events()
        self._flush_lookup_marks()
        self._flush_orders()
        with self.conn.pipeline():
            self.conn.execute("UPDATE orders SET profile_id = %s WHERE profile_id = %s", (into, other))
            # One person, one document: the merged profile's waiting events join the survivor's.
            self.conn.execute(
                "UPDATE criteo_events SET profile_id = %s, person = %s WHERE profile_id = %s", (into, str(into), other)
            )
            self.conn.execute(
                "INSERT INTO lookups (lookup, profile_id, due_at, version, looked_up_at, outcome, answer) "
                "SELECT lookup, %s, due_at, version, looked_up_at, outcome, answer FROM lookups WHERE profile_id = %s "
                "ORDER BY lookup ON CONFLICT (lookup, profile_id) DO UPDATE SET "
                "due_at = least(lookups.due_at, excluded.due_at), version = lookups.version + 1",
                (into, other),
            )
            self.conn.execute("DELETE FROM lookups WHERE profile_id = %s", (other,))
        self._drop_profile(merged)

    def _drop_profile(self, profile: _Profile) -> None:
        del self._profiles[profile.id]
        if not profile.new:
            self._gone.add(profile.id)
        else:
            self._missing.add(profile.id)

    def set_consent(self, profile_id: int, consent: bool, ts: float) -> bool:
        profile = self._profile(profile_id)
        if profile is None or (profile.consent_ts is not None and profile.consent_ts > ts):
            return False
        profile.consent, profile.consent_ts, profile.dirty = int(consent), ts, True
        return True

    def load_profile(self, profile_id: int) -> ProfileState | None:
        profile = self._profile(profile_id)
        if profile is None:
            return None
        idents = [Identifier(k[0], k[1], self._idents[k].extra, self._idents[k].active) for k in profile.keys]
        consent = None if profile.consent is None else bool(profile.consent)
        return ProfileState(profile_id, idents, consent, profile.consent_ts, dict(profile.memberships))

    # ---- memberships, targets, audiences

    def set_membership(self, profile_id: int, audience: str, member: bool, ts: float) -> bool:
        """Upsert when newer (ties: the later arrival wins). True if the row changed."""
        profile = self._profile(profile_id)
        if profile is None:
            return False
        current = profile.memberships.get(audience)
        if current is not None and ts < current[1]:
            return False
        profile.memberships[audience] = (member, ts)
        self._memberships[(profile_id, audience)] = (member, ts)
        return True

    def set_targets(self, profile_id: int, desired: set[TargetKey], now: float) -> int:
        """Make the profile's targets equal `desired` (written at the end, see `_flush_targets`);
        returns how many rows change desire."""
        profile = self._profile(profile_id)
        if profile is None:
            return 0
        changed = 0
        work = False
        for key, (was, acked, dead) in list(profile.targets.items()):
            if key in desired:
                continue
            changed += was
            if was or (acked == NOT_HELD and not dead):
                work = True
            if acked == NOT_HELD and not dead:
                del profile.targets[key]
            else:
                profile.targets[key] = (False, acked, dead)
        for key in desired:
            state = profile.targets.get(key)
            if state is None or not state[0]:
                changed += 1
                work = True
                profile.targets[key] = (True, state[1] if state else NOT_HELD, state[2] if state else False)
        if work:
            self._target_sets[profile_id] = (frozenset(desired), now)
        return changed

    def pending_of_profile(self, profile_id: int) -> list[tuple[TargetKey, bool]]:
        self._flush_targets()
        rows = self.conn.execute(
            "SELECT audience, id_type, id_value, desired FROM targets WHERE profile_id = %s "
            "AND desired != acked AND dead_letter_id IS NULL ORDER BY audience, id_type",
            (profile_id,),
        ).fetchall()
        return [(TargetKey(r[0], r[1], r[2]), bool(r[3])) for r in rows]

    def ensure_audience(self, name: str, auto_create: bool) -> None:
        if name not in self.store.known_audiences:
            self.store.record_audience(name, auto_create, conn=self.conn if self.dry else None)

    def ensure_new_audience(self, name: str, auto_create: bool, now: float, day: int, allowance: int) -> bool:
        if name in self.store.known_audiences:
            return False
        return self.store.record_audience(
            name, auto_create, now=now, day=day, allowance=allowance, conn=self.conn if self.dry else None
        )

    def add_to_counter(self, name: str, amount: int = 1) -> None:
        self._counter_deltas[name] = self._counter_deltas.get(name, 0) + amount

    # ---- deletion

    def tombstoned_since(self, idents: Iterable[tuple[str, str]], ts: float) -> bool:
        keys = list(idents)
        if not keys or not self._has_tombstones():
            return False
        unread = [k for k in keys if k not in self._tombstones]
        if unread:
            self._read_tombstones(unread)
        return any(self._tombstones[k] >= ts for k in keys)

    def _has_tombstones(self) -> bool:
        # Most shops delete rarely: one look per unit of work spares every event a query.
        if self._any_tombstone is None:
            self._any_tombstone = self.conn.execute("SELECT EXISTS (SELECT 1 FROM tombstones)").fetchone() == (True,)
        return self._any_tombstone

    def _read_tombstones(self, keys: Sequence[Key]) -> None:
        rows = self.conn.execute(
            "SELECT k.kind, k.value, i.deleted_at FROM " + _KEY_PROBES.format(table="tombstones", column="deleted_at"),
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
        for key in keys:
            self._tombstones.setdefault(key, float("-inf"))
        for kind, value, deleted_at in rows:
            self._tombstones[(kind, value)] = float(deleted_at)

    def erase_profile(self, profile_id: int, deleted_at: float, tombstone_kinds: set[str]) -> None:
        """Forget the person (see SqliteTx.erase_profile): targets Criteo holds or may hold stay,
        without a profile, until it acknowledges their removal."""
        profile = self._profile(profile_id)
        if profile is None:
            return
        for kind, value in sorted(profile.keys):
            if kind in tombstone_kinds:
                self.add_tombstone(kind, value, deleted_at)
        for key in profile.keys:
            self._owners[key] = None
            self._idents.pop(key, None)
            if self._ident_new.pop(key, None) is None:
                self._ident_changed.discard(key)
                self._ident_deleted.add(key)
        for audience in profile.memberships:
            self._memberships[(profile_id, audience)] = None
        for flow in profile.suppressions:
            self._suppressions[(profile_id, flow)] = None
        self._target_ops.append(("erase", profile_id, deleted_at))
        self._target_sets.pop(profile_id, None)
        self._flush_events()
        self._flush_lookup_marks()
        self._flush_orders()
        with self.conn.pipeline():
            self.conn.execute("DELETE FROM criteo_events WHERE profile_id = %s", (profile_id,))
            self.conn.execute("DELETE FROM orders WHERE profile_id = %s", (profile_id,))
            self.conn.execute("DELETE FROM lookups WHERE profile_id = %s", (profile_id,))
        self._drop_profile(profile)

    def add_tombstone(self, kind: str, value: str, deleted_at: float) -> None:
        """Record the deletion, and queue the erasure of the person's waiting events."""
        with self.conn.pipeline():
            for table in ("tombstones", "erasures"):
                self.conn.execute(
                    f"INSERT INTO {table} (kind, value, deleted_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (kind, value) DO UPDATE SET "
                    f"deleted_at = greatest({table}.deleted_at, excluded.deleted_at)",
                    (kind, value, deleted_at),
                )
        self._any_tombstone = True
        key = (kind, value)
        self._tombstones[key] = max(self._tombstones.get(key, float("-inf")), deleted_at)

    # ---- commerce

    def record_order(
        self, order_id: str, profile_id: int, ts: float, revenue: float | None, currency: str | None
    ) -> bool:
        """Remember the order; written with the unit of work's other rows (`_flush_orders`: one
        statement per chunk, where a round trip per order cost more than the rest of its event).
        The first delivery still wins (ON CONFLICT DO NOTHING, in the same transaction); the answer
        is only whether this unit of work had not recorded the order yet: whether an earlier one had
        is settled when the row is written (nothing in processing reads the answer)."""
        if order_id in self._orders:
            return False
        self._orders[order_id] = (profile_id, ts, revenue, currency)
        return True

    def mark_order_sent(self, order_id: str, now: float) -> bool:
        """Claim the order's one trackTransaction: an update that one transaction wins, whichever
        process sees the order (the other waits for it, then finds it sent)."""
        self._flush_orders()
        cursor = self.conn.execute(
            "UPDATE orders SET sent_at = %s WHERE order_id = %s AND sent_at IS NULL", (now, order_id)
        )
        return cursor.rowcount > 0

    def enqueue_event(
        self, person: str, profile_id: int | None, header: dict[str, Any], body: dict[str, Any], now: float
    ) -> None:
        self._events.append((person, profile_id, orjson.dumps(header), orjson.dumps(body), now))

    def queued_events(self, person: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        self._flush_events()
        rows = self.conn.execute(
            "SELECT header, body FROM criteo_events WHERE person = %s AND dead_letter_id IS NULL ORDER BY id",
            (person,),
        ).fetchall()
        return [(orjson.loads(r[0]), orjson.loads(r[1])) for r in rows]

    def drop_events_of(self, profile_id: int) -> int:
        self._flush_events()
        return self.conn.execute("DELETE FROM criteo_events WHERE profile_id = %s", (profile_id,)).rowcount

    def product_fields(self, merchant_id: str, product_id: str) -> dict[str, Any] | None:
        row = self._product(merchant_id, product_id)
        return None if row is None else dict(row[0])

    def _product(self, merchant_id: str, product_id: str) -> tuple[dict[str, Any], str] | None:
        key = (merchant_id, product_id)
        if key not in self._product_rows:
            row = self.conn.execute(
                "SELECT fields, fingerprint FROM products WHERE merchant_id = %s AND product_id = %s", key
            ).fetchone()
            self._product_rows[key] = None if row is None else (orjson.loads(row[0]), str(row[1]))
        return self._product_rows[key]

    def save_product(
        self,
        merchant_id: str,
        product_id: str,
        fields: dict[str, Any],
        fingerprint: str,
        missing: str | None,
        now: float,
    ) -> bool:
        """Keep the product's latest data; True when it changed. Written at the end, in key order,
        only where the stored fingerprint still differs (another process may have written it)."""
        current = self._product(merchant_id, product_id)
        if current is not None and current[1] == fingerprint:
            return False
        key = (merchant_id, product_id)
        self._product_rows[key] = (fields, fingerprint)
        self._products[key] = (orjson.dumps(fields), fingerprint, missing, now)
        return True

    # ---- profile flows

    def merge_traits(self, profile_id: int, traits: dict[str, Any], ts: float) -> None:
        """Newer traits overwrite older ones key by key; an older identify only fills gaps (the
        JSON merge patch of SQLite's `json_patch`, in memory: the profile is locked)."""
        profile = self._profile(profile_id)
        if profile is None:
            return
        current = profile.traits or {}
        if profile.traits_ts is None or ts >= profile.traits_ts:
            merged = merge_patch(current, traits)
        else:
            merged = merge_patch(traits, current)
        profile.traits = merged if isinstance(merged, dict) else {}
        profile.traits_ts = max(profile.traits_ts or 0.0, ts)
        profile.dirty = True

    def set_suppression(self, profile_id: int, flow: str, since: float, until: float) -> bool:
        profile = self._profile(profile_id)
        if profile is None:
            return False
        current = profile.suppressions.get(flow)
        if current is not None and until <= current[1]:
            return False
        profile.suppressions[flow] = (since, until)
        self._suppressions[(profile_id, flow)] = (since, until)
        return True

    def active_suppressions(self, profile_id: int, now: float) -> list[str]:
        profile = self._profile(profile_id)
        return [flow for flow, (_, until) in profile.suppressions.items() if until > now] if profile else []

    def end_suppression(self, profile_id: int, flow: str) -> None:
        profile = self._profile(profile_id)
        if profile is not None and profile.suppressions.pop(flow, None) is not None:
            self._suppressions[(profile_id, flow)] = None

    # ---- enrichment

    def mark_lookups(self, profile_id: int, lookups: Iterable[str], now: float) -> None:
        for lookup in lookups:
            key = (lookup, profile_id)
            self._lookup_marks[key] = min(now, self._lookup_marks.get(key, now))

    # ---- events set aside

    def quarantine_event(self, event: InboxEvent, error: str, now: float) -> None:
        with self.conn.pipeline():
            self.conn.execute(
                "INSERT INTO failed_events (seq, source, received_at, body, error, failed_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (seq) DO UPDATE SET error = excluded.error, "
                "failed_at = excluded.failed_at",
                (event.seq, event.source, event.received_at, orjson.dumps(event.message), error[:2000], now),
            )
            self.conn.execute("DELETE FROM inbox WHERE seq = %s", (event.seq,))

    # ------------------------------------------------------------------ the writes

    def flush(self) -> None:
        """Write what this unit of work changed, a few multi-row statements per table (one round
        trip: the statements are pipelined)."""
        try:
            with self.conn.pipeline():
                self._flush_identity()
                self._flush_profile_rows()
                self._flush_targets()
                self._flush_events()
                self._flush_lookup_marks()
                self._flush_orders()
                self._flush_products()
                self._flush_counters()
        except pg_errors.UniqueViolation as error:
            if error.diag.table_name != "identifiers":
                raise
            # Another transaction holds an identifier we were sure nobody held (a lock was missed):
            # the unit of work is done again. A plain INSERT (rather than ON CONFLICT DO NOTHING
            # and a count) spares every new identifier PostgreSQL's speculative insertion.
            raise StoreUnavailable("store conflict: an identifier was taken by another transaction") from error

    def _flush_identity(self) -> None:
        conn = self.conn
        new_profiles = [p for p in self._profiles.values() if p.new and p.dirty]
        if new_profiles:
            conn.execute(
                "INSERT INTO profiles (id, created_at, last_seen_at, consent, consent_ts, traits, traits_ts) "
                "SELECT * FROM unnest(%s::int8[], %s::float8[], %s::float8[], %s::int2[], %s::float8[], %s::text[], "
                "%s::float8[])",
                _columns(new_profiles),
            )
        changed_profiles = [p for p in self._profiles.values() if not p.new and p.dirty]
        if changed_profiles:
            conn.execute(
                "UPDATE profiles p SET created_at = u.created_at, last_seen_at = u.last_seen_at, consent = u.consent, "
                "consent_ts = u.consent_ts, traits = u.traits, traits_ts = u.traits_ts "
                "FROM unnest(%s::int8[], %s::float8[], %s::float8[], %s::int2[], %s::float8[], %s::text[], "
                "%s::float8[]) AS u(id, created_at, last_seen_at, consent, consent_ts, traits, traits_ts) "
                "WHERE p.id = u.id",
                _columns(sorted(changed_profiles, key=lambda p: p.id)),
            )
        for profile in self._profiles.values():
            profile.dirty = False
            profile.new = False
        if self._gone:
            conn.execute("DELETE FROM profiles WHERE id = ANY(%s)", (sorted(self._gone),))
            self._gone.clear()
        if self._ident_deleted:
            keys = sorted(self._ident_deleted)
            conn.execute(
                "DELETE FROM identifiers i USING unnest(%s::text[], %s::text[]) AS k(kind, value) "
                "WHERE i.kind = k.kind AND i.value = k.value",
                ([k[0] for k in keys], [k[1] for k in keys]),
            )
            self._ident_deleted.clear()
        if self._ident_changed:
            rows = sorted((k, self._idents[k]) for k in self._ident_changed if k in self._idents)
            conn.execute(
                "UPDATE identifiers i SET profile_id = u.profile_id, active = u.active, active_ts = u.active_ts "
                "FROM unnest(%s::text[], %s::text[], %s::int8[], %s::int2[], %s::float8[]) "
                "AS u(kind, value, profile_id, active, active_ts) WHERE i.kind = u.kind AND i.value = u.value",
                (
                    [k[0] for k, _ in rows],
                    [k[1] for k, _ in rows],
                    [r.profile_id for _, r in rows],
                    [int(r.active) for _, r in rows],
                    [r.active_ts for _, r in rows],
                ),
            )
            self._ident_changed.clear()
        if self._ident_new:
            rows = sorted(self._ident_new.items())
            conn.execute(
                "INSERT INTO identifiers (kind, value, profile_id, extra, active, active_ts) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::int8[], %s::text[], %s::int2[], %s::float8[])",
                (
                    [k[0] for k, _ in rows],
                    [k[1] for k, _ in rows],
                    [r.profile_id for _, r in rows],
                    [r.extra for _, r in rows],
                    [int(r.active) for _, r in rows],
                    [r.active_ts for _, r in rows],
                ),
            )
            self._ident_new.clear()

    def _flush_profile_rows(self) -> None:
        """Memberships and suppressions: the profile is locked, so its rows as decided here are the
        truth; each is written as its final state."""
        for table, second, rows in (
            ("memberships", "audience", self._memberships),
            ("suppressions", "flow", self._suppressions),
        ):
            if not rows:
                continue
            gone = sorted(k for k, v in rows.items() if v is None)
            kept = sorted((k, v) for k, v in rows.items() if v is not None)
            if gone:
                self.conn.execute(
                    f"DELETE FROM {table} t USING unnest(%s::int8[], %s::text[]) AS k(profile_id, name) "
                    f"WHERE t.profile_id = k.profile_id AND t.{second} = k.name",
                    ([k[0] for k in gone], [k[1] for k in gone]),
                )
            if kept and table == "memberships":
                self.conn.execute(
                    "INSERT INTO memberships (profile_id, audience, member, ts) "
                    "SELECT * FROM unnest(%s::int8[], %s::text[], %s::int2[], %s::float8[]) "
                    "ON CONFLICT (profile_id, audience) DO UPDATE SET member = excluded.member, ts = excluded.ts",
                    (
                        [k[0] for k, _ in kept],
                        [k[1] for k, _ in kept],
                        [int(v[0]) for _, v in kept],
                        [v[1] for _, v in kept],
                    ),
                )
            elif kept:
                self.conn.execute(
                    "INSERT INTO suppressions (profile_id, flow, since, until) "
                    "SELECT * FROM unnest(%s::int8[], %s::text[], %s::float8[], %s::float8[]) "
                    "ON CONFLICT (profile_id, flow) DO UPDATE SET since = excluded.since, until = excluded.until",
                    (
                        [k[0] for k, _ in kept],
                        [k[1] for k, _ in kept],
                        [v[0] for _, v in kept],
                        [v[1] for _, v in kept],
                    ),
                )
            rows.clear()

    def _flush_targets(self) -> None:
        """Merges and erasures in their order, then each profile's last `set_targets`. Every
        statement decides on the rows as they are when it runs (delivery claims and acknowledges
        them meanwhile) and locks them in key order, as delivery does."""
        conn = self.conn
        for op, profile_id, value in self._target_ops:
            if op == "merge":
                conn.execute(
                    "UPDATE targets t SET profile_id = %s FROM (SELECT audience, id_type, id_value FROM targets "
                    "WHERE profile_id = %s ORDER BY 1, 2, 3 FOR UPDATE) l "
                    "WHERE (t.audience, t.id_type, t.id_value) = (l.audience, l.id_type, l.id_value)",
                    (profile_id, int(value)),
                )
            else:
                _erase_targets(conn, profile_id, value)
        self._target_ops.clear()
        if not self._target_sets:
            return
        profiles = sorted(self._target_sets)
        wanted = [(pid, key) for pid in profiles for key in self._target_sets[pid][0]]
        wanted_arrays = (
            [k.audience for _, k in wanted],
            [k.id_type for _, k in wanted],
            [k.id_value for _, k in wanted],
        )
        not_wanted = (
            "t.profile_id = ANY(%(profiles)s) AND NOT EXISTS (SELECT 1 FROM unnest(%(wa)s::text[], %(wt)s::text[], "
            "%(wv)s::text[]) AS w(a, t, v) WHERE w.a = t.audience AND w.t = t.id_type AND w.v = t.id_value)"
        )
        params = {"profiles": profiles, "wa": wanted_arrays[0], "wt": wanted_arrays[1], "wv": wanted_arrays[2]}
        # Neither wanted nor held nor claimed: the row carries no information any more.
        conn.execute(
            "DELETE FROM targets d USING (SELECT audience, id_type, id_value FROM targets t WHERE "
            f"{not_wanted} AND t.acked = 0 AND t.dead_letter_id IS NULL AND t.claim_until IS NULL "
            "ORDER BY 1, 2, 3 FOR UPDATE) l "
            "WHERE (d.audience, d.id_type, d.id_value) = (l.audience, l.id_type, l.id_value)",
            params,
        )
        # Held or possibly held (or parked): a removal to send.
        since = {pid: self._target_sets[pid][1] for pid in profiles}
        conn.execute(
            "UPDATE targets d SET desired = 0, since = s.since, attempts = 0, next_at = 0, first_failure = NULL "
            "FROM (SELECT audience, id_type, id_value, profile_id FROM targets t WHERE "
            f"{not_wanted} AND t.desired = 1 ORDER BY 1, 2, 3 FOR UPDATE) l "
            "JOIN unnest(%(sp)s::int8[], %(ss)s::float8[]) AS s(profile_id, since) ON s.profile_id = l.profile_id "
            "WHERE (d.audience, d.id_type, d.id_value) = (l.audience, l.id_type, l.id_value)",
            {**params, "sp": profiles, "ss": [since[p] for p in profiles]},
        )
        ordered = sorted(wanted, key=lambda item: (item[1].audience, item[1].id_type, item[1].id_value))
        # A row may exist without this profile (an erased person's identifier seen again).
        conn.execute(
            "INSERT INTO targets (audience, id_type, id_value, profile_id, desired, since) "
            "SELECT a, t, v, p, 1, s FROM unnest(%s::text[], %s::text[], %s::text[], %s::int8[], %s::float8[]) "
            "WITH ORDINALITY AS u(a, t, v, p, s, n) ORDER BY n "
            "ON CONFLICT (audience, id_type, id_value) DO UPDATE SET desired = 1, profile_id = excluded.profile_id, "
            "since = excluded.since, attempts = 0, next_at = 0, first_failure = NULL "
            "WHERE targets.desired = 0 OR targets.profile_id IS DISTINCT FROM excluded.profile_id",
            (
                [k.audience for _, k in ordered],
                [k.id_type for _, k in ordered],
                [k.id_value for _, k in ordered],
                [pid for pid, _ in ordered],
                [since[pid] for pid, _ in ordered],
            ),
        )
        self._target_sets.clear()

    def _flush_events(self) -> None:
        if not self._events:
            return
        rows, self._events = self._events, []
        self.conn.execute(
            "INSERT INTO criteo_events (person, profile_id, header, body, created_at) "
            "SELECT p, i, h, b, c FROM unnest(%s::text[], %s::int8[], %s::bytea[], %s::bytea[], %s::float8[]) "
            "WITH ORDINALITY AS u(p, i, h, b, c, n) ORDER BY n",
            tuple(list(column) for column in zip(*rows, strict=True)),
        )

    def _flush_lookup_marks(self) -> None:
        if not self._lookup_marks:
            return
        marks = sorted(self._lookup_marks.items())
        self._lookup_marks = {}
        self.conn.execute(
            "INSERT INTO lookups (lookup, profile_id, due_at) "
            "SELECT l, p, d FROM unnest(%s::text[], %s::int8[], %s::float8[]) WITH ORDINALITY AS u(l, p, d, n) "
            "ORDER BY n ON CONFLICT (lookup, profile_id) DO UPDATE SET "
            "due_at = least(lookups.due_at, excluded.due_at), version = lookups.version + 1",
            ([k[0] for k, _ in marks], [k[1] for k, _ in marks], [due for _, due in marks]),
        )

    def _flush_orders(self) -> None:
        if not self._orders:
            return
        rows = sorted(self._orders.items())  # key order: two chunks never wait for each other in a cycle
        self._orders = {}
        self.conn.execute(
            "INSERT INTO orders (order_id, profile_id, ts, revenue, currency) "
            "SELECT o, p, t, r, c FROM unnest(%s::text[], %s::int8[], %s::float8[], %s::float8[], %s::text[]) "
            "WITH ORDINALITY AS u(o, p, t, r, c, n) ORDER BY n ON CONFLICT (order_id) DO NOTHING",
            (
                [k for k, _ in rows],
                [v[0] for _, v in rows],
                [v[1] for _, v in rows],
                [v[2] for _, v in rows],
                [v[3] for _, v in rows],
            ),
        )

    def _flush_products(self) -> None:
        if not self._products:
            return
        rows = sorted(self._products.items())
        self._products = {}
        self.conn.execute(
            "INSERT INTO products (merchant_id, product_id, fields, fingerprint, missing, updated_at) "
            "SELECT m, p, f, fp, mi, u FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::text[], %s::text[], "
            "%s::float8[]) WITH ORDINALITY AS r(m, p, f, fp, mi, u, n) ORDER BY n "
            "ON CONFLICT (merchant_id, product_id) DO UPDATE SET fields = excluded.fields, "
            "fingerprint = excluded.fingerprint, missing = excluded.missing, updated_at = excluded.updated_at, "
            "attempts = 0, next_at = 0, first_failure = NULL WHERE products.fingerprint != excluded.fingerprint",
            (
                [k[0] for k, _ in rows],
                [k[1] for k, _ in rows],
                [v[0] for _, v in rows],
                [v[1] for _, v in rows],
                [v[2] for _, v in rows],
                [v[3] for _, v in rows],
            ),
        )

    def _flush_counters(self) -> None:
        deltas = {name: delta for name, delta in self._counter_deltas.items() if delta}
        self._counter_deltas = {}
        if deltas:
            self.conn.execute(
                "INSERT INTO counter_deltas (name, delta) SELECT * FROM unnest(%s::text[], %s::int8[])",
                (list(deltas), list(deltas.values())),
            )


class PgChunk(PgTx):
    """A unit of work with the inbox events it claimed (`PostgresStore.claim_chunk`): the rows are
    locked (`FOR UPDATE SKIP LOCKED`) by its transaction, so no other chunk gets them, and a
    process that dies gives them back with its connection."""

    def __init__(self, store: PostgresStore, conn: psycopg.Connection[Any], events: list[InboxEvent]) -> None:
        super().__init__(store, conn)
        self._events_claimed = events
        self._done: list[int] = []
        self.left_inbox = 0  # events this chunk took out of the inbox (done or set aside)

    @property
    def events(self) -> list[InboxEvent]:
        return self._events_claimed

    def should_commit_early(self) -> bool:
        return False  # no single write lock to give way on: ingest commits beside us

    def done(self, events: Sequence[InboxEvent]) -> None:
        self._done += [event.seq for event in events]

    def set_aside(self, event: InboxEvent, error: str, now: float) -> None:
        self.quarantine_event(event, error, now)
        self.left_inbox += 1

    def finish(self) -> None:
        """Before the commit: the effects, then the done events leave the inbox."""
        self.flush()
        if self._done:
            self.left_inbox += self.conn.execute("DELETE FROM inbox WHERE seq = ANY(%s)", (self._done,)).rowcount


def _columns(profiles: Sequence[_Profile]) -> tuple[list[Any], ...]:
    return (
        [p.id for p in profiles],
        [p.created_at for p in profiles],
        [p.last_seen_at for p in profiles],
        [p.consent for p in profiles],
        [p.consent_ts for p in profiles],
        [orjson.dumps(p.traits).decode() if p.traits is not None else None for p in profiles],
        [p.traits_ts for p in profiles],
    )


def _erase_targets(conn: psycopg.Connection[Any], profile_id: int, deleted_at: float) -> None:
    """An erased person's targets: those never held go; the others (held, unknown, parked) stay
    without a profile as removals to send. A dead-lettered add may have reached Criteo (an answer
    lost before it was given up): it counts as unknown, so that the removal goes out too."""
    locked = (
        "FROM (SELECT audience, id_type, id_value FROM targets WHERE profile_id = %(p)s ORDER BY 1, 2, 3 FOR UPDATE) l "
        "WHERE (t.audience, t.id_type, t.id_value) = (l.audience, l.id_type, l.id_value)"
    )
    params = {"p": profile_id, "at": deleted_at}
    conn.execute(
        f"DELETE FROM targets t USING {locked.removeprefix('FROM ')} AND t.acked = 0 AND t.dead_letter_id IS NULL "
        "AND t.claim_until IS NULL",
        params,
    )
    conn.execute(
        "UPDATE targets t SET desired = 0, acked = CASE WHEN t.acked = 0 THEN 2 ELSE t.acked END, profile_id = NULL, "
        f"since = %(at)s, attempts = 0, next_at = 0, first_failure = NULL, dead_letter_id = NULL {locked} "
        "AND t.dead_letter_id IS NOT NULL",
        params,
    )
    conn.execute(
        f"UPDATE targets t SET desired = 0, profile_id = NULL, since = %(at)s, attempts = 0, next_at = 0 {locked}",
        params,
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as SQLite's `json_patch`: `patch`'s keys win, recursively into
    objects, and a null in `patch` removes the key."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
