"""`segcrit import` and `segcrit resync` on a real store, resync against the emulator over loopback."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import orjson
import pytest

from segcrit.backfill import import_files, resync_audience
from segcrit.clock import FakeClock, SystemClock
from segcrit.delivery.worker import DeliveryWorker
from segcrit.emulator import EmulatorState
from segcrit.errors import CriteoError
from segcrit.identity.normalize import email_hashes
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.runtime import build_criteo_client
from segcrit.store.sqlite import SqliteStore
from tests.helpers import audience_event, make_config, put

T0 = 1_800_000_000.0


def test_import_queues_valid_lines_and_reports_the_rest(tmp_path: Path) -> None:
    config = make_config(str(tmp_path / "s.db"))
    lines = [orjson.dumps(audience_event(f"u{i}", "vip", True, T0, email=f"p{i}@shop.example")) for i in range(5)]
    lines.insert(2, b"{not json")
    lines.append(orjson.dumps({"type": "track", "userId": "u9"}))  # a track without `event`
    lines.append(lines[0])  # the same messageId again
    archive = tmp_path / "archive.ndjson.gz"
    archive.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        report = import_files(config, store, [archive], "web", progress=False)
        assert (report.lines, report.stored, report.duplicates, report.rejected) == (8, 5, 1, 2)
        assert report.reasons["invalid JSON"] == 1
        Processor(store, config, FakeClock(T0), Metrics()).drain()
        assert [s.desired for s in store.audience_stats() if s.name == "vip"] == [5]
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("s.db"))
        assert b"shop.example" not in raw
    finally:
        store.close()


def test_resync_empties_and_refills_the_contact_list(
    tmp_path: Path, emulator_url: str, emulator_state: EmulatorState
) -> None:
    config = make_config(str(tmp_path / "s.db"), api_url=emulator_url)
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        put(store, *[audience_event(f"u{i}", "vip", True, T0, email=f"p{i}@shop.example") for i in range(3)])
        Processor(store, config, FakeClock(T0), Metrics()).drain()
        assert asyncio.run(resync_audience(config, store, "vip", progress=False)) == 3
        segment = emulator_state.segment("vip")
        # Someone added an identifier by hand in Criteo: a resync puts the list back to segcrit's truth.
        emulator_state.amend(segment, "add", "email", {"f" * 64})
        assert asyncio.run(resync_audience(config, store, "vip", progress=False)) == 3
        expected = {email_hashes(f"p{i}@shop.example")[0] for i in range(3)}
        assert emulator_state.members("vip", "email") == expected
        assert len(emulator_state.calls("contact-list-delete")) == 2
    finally:
        store.close()


def test_a_resync_whose_wipe_answer_is_lost_leaves_every_member_to_send_again(
    tmp_path: Path, emulator_url: str, emulator_state: EmulatorState
) -> None:
    config = make_config(str(tmp_path / "s.db"), api_url=emulator_url)
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        put(store, *[audience_event(f"u{i}", "vip", True, T0, email=f"p{i}@shop.example") for i in range(3)])
        Processor(store, config, FakeClock(T0), Metrics()).drain()
        assert asyncio.run(resync_audience(config, store, "vip", progress=False)) == 3
        emulator_state.set_faults("apply_then_500=1")
        with pytest.raises(CriteoError):
            asyncio.run(resync_audience(config, store, "vip", progress=False))
        assert emulator_state.members("vip") == set()  # wiped, though Criteo answered 500

        assert store.pending_count() == 3  # nothing counts as held any more: everyone goes again

        async def deliver() -> None:
            client, http = build_criteo_client(config, SystemClock(), Metrics())
            try:
                await DeliveryWorker(store, config, client, SystemClock(), Metrics()).drain_once(force=True)
            finally:
                await http.aclose()

        asyncio.run(deliver())
        assert emulator_state.members("vip", "email") == {email_hashes(f"p{i}@shop.example")[0] for i in range(3)}
        assert store.pending_count() == 0
    finally:
        store.close()
