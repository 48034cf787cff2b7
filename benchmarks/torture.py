"""kill -9 torture (SPEC §7: `kill -9` at any moment loses no acknowledged event and no change).

    .venv/bin/python benchmarks/torture.py [--kills 100] [--seed N] [--senders 3] [--pace-secs 0.25]
        [--max-up-secs 3.0] [--startup-share 0.15] [--segment-max-retries 3] [--drain-secs 60]
        [--timeout-secs 1800] [--keep]

Two real processes on loopback: `segcrit emulator` (never killed) and `segcrit serve` on a SQLite
store in a temporary folder (flows audience_sync and conversions, `identity.send: [email, madid]`),
killed with SIGKILL `--kills` times and restarted on the same store each time. Most kills come a
random 0.05..`--max-up-secs` s after the server answered `/readyz`; a `--startup-share` of them at a
random moment of its start instead. The moments come from a seeded RNG: `--seed` repeats the same
choices (the processes' own timing still varies).

Meanwhile `--senders` Tracking API senders and as many webhook senders send continuous traffic, one
request every `--pace-secs` each (tests/e2e/crash_traffic.py, shared with the SIGKILL e2e test):
batches built and sent by Segment's Python library with its own retries, and Engage messages as
signed JSON arrays retried like Segment's pipeline, each request until it is acknowledged, with the
same messageIds. Each request leaves a mark in the end state no later request overwrites: people
who enter an audience for good, people who leave one or withdraw consent (some give it back), one
order per Tracking API batch. Losing any acknowledged request changes the end state.

After the last kill the traffic stops (every request acknowledged), segcrit starts a final time,
the run waits until Criteo holds the expected state, stops segcrit with SIGTERM, and checks:

- the emulator's exact membership per audience and identifier type (what Criteo holds);
- every order's trackTransaction arrived, and how many arrived more than once (SPEC §7 allows a
  resend when an answer was lost; the issue asks for 0);
- no dead letter, no event set aside, nothing left in the inbox or waiting for delivery;
- segcrit exited 0 on SIGTERM.

Differences are traced. After every kill the run notes what the emulator held and had received
(once the requests segcrit had already sent are handled) and what segcrit's store still had
waiting. A change Criteo had applied while segcrit's store still had it pending was answered but
killed before segcrit committed the answer. A trackTransaction sent again after such a kill is
what SPEC §7's at-least-once allows; an identifier left in Criteo (or missing) after such a kill,
because the person changed again before the resend, is the lost-answer case of SPEC §1 (Uncertain
calls). Any difference not so explained is a bug of another kind: its own MISS line.

Rate limits are raised on both sides (segcrit's `criteo.rate_limit_per_minute` and
`events_rate_limit_per_minute`, the emulator's limits): this run is about crashes, not budgets.
Printed: seed, kills, requests, events, retries, elapsed time, then PASS/MISS lines; exit 1 on any
MISS. The temporary folder (store, server and emulator logs) is kept with `--keep` or on a MISS.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from segcrit.emulator.settings import criteo_section, sources_section

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.e2e.crash_traffic
from tests.e2e.crash_traffic import (
    EngageTraffic,
    Expected,
    Identifier,
    Tally,
    TrackingSender,
    TrackingTraffic,
    WebhookSender,
    differences,
    flatten,
    run_stream,
    transactions,
)

from bench_common import free_port
from segcrit.emulator.state import EVENT_LOG_SIZE
from segcrit.status import collect_status
from segcrit.store.sqlite import SqliteStore

WRITE_KEY = "torture-write-key"
SECRET = "torture-secret"
START_DEADLINE_SECS = 60.0
STOP_DEADLINE_SECS = 10.0  # SPEC §2: serve stops within 10 s of SIGTERM
KILL_SETTLE_SECS = 0.3  # after a kill, for the emulator to finish the requests it already had
UNLIMITED = "  rate_limit_per_minute: 100000\n  events_rate_limit_per_minute: 1000000\n"
CONFIG = """\
store: sqlite:///{db}
server: {{host: 127.0.0.1, port: {port}}}
{sources}{criteo}identity:
  send: [email, madid]
flows:
  - type: audience_sync
  - type: conversions
delivery:
  max_wait_secs: 0.5
"""


class TortureFailed(Exception):
    """segcrit did something the run cannot go on from (exited by itself, never got ready)."""


def segcrit(*args: str) -> list[str]:
    return [sys.executable, "-m", "segcrit", *args]


@dataclass
class Serve:
    """`segcrit serve` as a process that is killed and started again on the same store."""

    url: str
    config: Path
    log: IO[bytes]
    process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        self.process = subprocess.Popen(
            segcrit("serve", "--config", str(self.config)), stdout=self.log, stderr=subprocess.STDOUT
        )

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise TortureFailed(f"segcrit serve exited by itself with {self.process.returncode} (see serve.log)")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self) -> None:
        end = time.monotonic() + START_DEADLINE_SECS
        while not self.ready():
            if time.monotonic() > end:
                raise TortureFailed(f"segcrit serve not ready within {START_DEADLINE_SECS:g} s")
            time.sleep(0.02)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took). A process still there after the deadline is killed."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(STOP_DEADLINE_SECS + 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        return code, time.monotonic() - started


@dataclass
class KillRecord:
    """What was true at one kill (segcrit down, Criteo as segcrit left it): to trace differences later."""

    documents: int  # Events API documents the emulator had received
    queued_orders: set[str]  # orders whose trackTransaction segcrit's store still had queued
    # Calls Criteo had applied and segcrit had not recorded: changes still pending in the store
    # (the resend is a no-op, unless the person changes first and the pending row goes)...
    applied_adds: set[Identifier]
    applied_removes: set[Identifier]
    # ...and changes the store no longer knows of (the person changed while the call was in flight):
    # held by Criteo with no row saying so, or removed from Criteo while the store says held.
    forgotten_adds: set[Identifier]
    forgotten_removes: set[Identifier]

    def lost_answers(self) -> set[Identifier]:
        return self.applied_adds | self.applied_removes | self.forgotten_adds | self.forgotten_removes


def lost_answer_kills(kills: list[KillRecord]) -> tuple[int, int]:
    """(kills that came between Criteo applying a contact-list call and segcrit recording it, those at
    which the store had already lost track of such a change). Each identifier counts at the first kill
    that found it: a forgotten one stays forgotten at every later kill."""
    caught = forgotten = 0
    seen: set[Identifier] = set()
    for kill in kills:
        new = kill.lost_answers() - seen
        caught += bool(new)
        forgotten += bool(new & (kill.forgotten_adds | kill.forgotten_removes))
        seen |= new
    return caught, forgotten


@dataclass
class Run:
    args: argparse.Namespace
    folder: Path
    rng: random.Random
    expected: Expected = field(default_factory=Expected)
    tally: Tally = field(default_factory=Tally)
    kills: list[KillRecord] = field(default_factory=list)
    startup_kills: int = 0
    up_secs: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def db(self) -> Path:
        return self.folder / "segcrit.db"


def emulator_state(url: str, members: bool) -> dict[str, Any]:
    return httpx.get(f"{url}/_emulator/state", params={"members": int(members)}, timeout=60).json()  # type: ignore[no-any-return]


def criteo_members(state: dict[str, Any]) -> dict[str, dict[str, set[str]]]:
    return {s["name"]: {kind: set(values) for kind, values in s["members"].items()} for s in state["segments"]}


def record_kill(db: Path, emulator_url: str) -> KillRecord:
    """What Criteo had received and what segcrit's store still had waiting, read while segcrit is down."""
    # A request segcrit had sent whole before it died is still handled by the emulator (its answer
    # goes nowhere): let those land before reading what Criteo holds.
    time.sleep(KILL_SETTLE_SECS)
    state = emulator_state(emulator_url, members=True)
    criteo = flatten(criteo_members(state))
    store = SqliteStore(str(db))
    try:
        changes = store.due_changes(1e18, 10**7)
        events = store.due_events(1e18, 10**7)
        acked = {
            (a.name, kind, value)
            for a in store.audiences()
            for kind, values in store.acknowledged_members(a.name).items()
            for value in values
        }
    finally:
        store.close()
    adds = {(c.key.audience, c.key.id_type, c.key.id_value) for c in changes if c.add}
    removes = {(c.key.audience, c.key.id_type, c.key.id_value) for c in changes if not c.add}
    return KillRecord(
        documents=len(state["eventDocuments"]),
        queued_orders={str(e.body["id"]) for e in events if e.body.get("event") == "trackTransaction"},
        applied_adds=adds & criteo,
        applied_removes=removes - criteo,
        forgotten_adds=criteo - acked - adds,
        forgotten_removes=(acked - removes) - criteo,
    )


def start_emulator(folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    log = (folder / "emulator.log").open("wb")
    process = subprocess.Popen(segcrit("emulator", "--port", str(port)), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + START_DEADLINE_SECS
    while True:
        try:
            limits = {"rate_limit_per_minute": 1_000_000, "events_rate_limit_per_minute": 10_000_000}
            if httpx.post(f"{url}/_emulator/config", json=limits, timeout=1).status_code == 200:
                return url, process
        except httpx.HTTPError:
            if time.monotonic() > end:
                process.kill()
                raise TortureFailed("the emulator did not start") from None
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ phases


def kill_at_random_moments(
    run: Run, serve: Serve, emulator: subprocess.Popen[bytes], emulator_url: str, failures: list[BaseException]
) -> None:
    args, rng = run.args, run.rng
    for n in range(1, args.kills + 1):
        if failures:
            raise TortureFailed(f"a sender failed: {failures[0]!r}")
        if emulator.poll() is not None:
            # Never this run's doing: on a shared machine, something else stopped it.
            raise TortureFailed(f"the emulator exited with {emulator.returncode} (see emulator.log)")
        serve.spawn()
        spawned = time.monotonic()
        if rng.random() < args.startup_share:
            moment = spawned + rng.uniform(0.0, 1.0)
            seen_ready = False
            while time.monotonic() < moment:  # the kill may still find it serving
                seen_ready = seen_ready or serve.ready()
                time.sleep(0.02)
            run.startup_kills += not seen_ready
        else:
            serve.wait_ready()
            up_from = time.monotonic()
            time.sleep(rng.uniform(0.05, args.max_up_secs))  # the moment of the kill; nothing waits on it
            run.up_secs.append(time.monotonic() - up_from)
        serve.kill()
        run.kills.append(record_kill(run.db, emulator_url))
        if n % 10 == 0:
            elapsed = time.monotonic() - run.started
            print(f"  {n} kills, {run.expected.requests:,} requests acknowledged, {elapsed:.0f} s", file=sys.stderr)


def converged(run: Run, emulator_url: str) -> bool:
    state = emulator_state(emulator_url, members=True)
    members_ok = flatten(criteo_members(state)) == flatten(run.expected.members())
    return members_ok and set(transactions(state)) >= run.expected.orders


def wait_converged(run: Run, emulator_url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if converged(run, emulator_url):
            return True
        time.sleep(0.5)
    return False


def traced_duplicates(run: Run, sent: dict[str, list[int]]) -> tuple[int, int]:
    """(copies resent after a kill that came between Criteo's answer and segcrit's commit, the others).

    Copy j of an order is so explained when a kill came after copy j-1 arrived and before copy j
    did, while segcrit's store still had the order queued: it had been answered, not committed."""
    in_window = other = 0
    for order, positions in sent.items():
        for before, after in itertools.pairwise(positions):
            caught = any(before < kill.documents <= after and order in kill.queued_orders for kill in run.kills)
            in_window += caught
            other += not caught
    return in_window, other


def window_kills(run: Run, sent: dict[str, list[int]]) -> int:
    """Kills that came between Criteo's answer and segcrit's commit of at least one trackTransaction."""
    return sum(
        any(order in sent and sent[order][0] < kill.documents for order in kill.queued_orders) for kill in run.kills
    )


Lines = list[tuple[bool, str]]  # (held?, the line to print after PASS or MISS)


def membership_lines(run: Run, state: dict[str, Any]) -> Lines:
    want, have = flatten(run.expected.members()), flatten(criteo_members(state))
    kinds = {kind: sum(1 for _, k, _ in want if k == kind) for kind in ("email", "madid")}
    diff = differences(run.expected, criteo_members(state))
    exact = (
        not diff,
        f"Criteo's membership is exactly the expected one: {len({a for a, _, _ in want})} audiences, "
        f"{kinds['email']:,} email and {kinds['madid']:,} madid identifiers"
        + ("" if not diff else "; differences: " + "; ".join(diff[:10])),
    )
    extra, missing = have - want, want - have
    # A change Criteo had applied when a kill came, before segcrit recorded it: if the person
    # changed during the call or before the resend, segcrit sees nothing left to send (SPEC §1
    # Uncertain calls).
    lost_adds = {k for k in extra if any(k in kill.applied_adds | kill.forgotten_adds for kill in run.kills)}
    lost_removes = {k for k in missing if any(k in kill.applied_removes | kill.forgotten_removes for kill in run.kills)}
    other = len(extra) + len(missing) - len(lost_adds) - len(lost_removes)
    explained = (
        f"; {len(lost_adds)} extra and {len(lost_removes)} missing identifiers are: Criteo had applied their "
        "change when a kill came before segcrit recorded it, and the person changed during the call or before "
        "the resend, so segcrit saw nothing left to send (SPEC §1 Uncertain calls)"
    )
    traced = (
        other == 0,
        f"membership differences not explained by a kill between Criteo's answer and segcrit's commit: {other}"
        + (explained if lost_adds or lost_removes else ""),
    )
    return [exact, traced]


def order_lines(run: Run, state: dict[str, Any]) -> Lines:
    sent = {order: [position for position, _ in copies] for order, copies in transactions(state).items()}
    missing, unexpected = run.expected.orders - set(sent), set(sent) - run.expected.orders
    arrived = (
        not missing and not unexpected,
        f"every acknowledged order's trackTransaction arrived: {len(run.expected.orders) - len(missing):,} of "
        f"{len(run.expected.orders):,}"
        + (f"; missing {sorted(missing)[:5]}" if missing else "")
        + (f"; unexpected {sorted(unexpected)[:5]}" if unexpected else ""),
    )
    log_full = len(state["eventDocuments"]) >= EVENT_LOG_SIZE
    unreliable = f"; the emulator kept only the last {EVENT_LOG_SIZE:,} documents: not reliable" if log_full else ""
    in_window, other = traced_duplicates(run, sent)
    traced = (other == 0 and not log_full, f"duplicate trackTransaction not explained by a kill: {other}{unreliable}")
    # A resend after a lost answer repeats the event: same id, same content. Criteo keys a
    # trackTransaction on (account, event, id), so it counts the order once (SPEC §7, at-least-once).
    differing = sorted(
        order for order, copies in transactions(state).items() if any(e != copies[0][1] for _, e in copies)
    )
    counted_twice = (
        not differing and not log_full,
        f"orders Criteo counts more than once: {len(differing)} (a resend with another id or content); "
        f"resent with the same id and content: {in_window + other} trackTransaction, {in_window} of them because "
        f"a kill came between Criteo's answer and segcrit's commit ({window_kills(run, sent)} of "
        f"{len(run.kills)} kills did)" + (f"; differing {differing[:5]}" if differing else ""),
    )
    return [arrived, traced, counted_twice]


def leftover_line(run: Run) -> tuple[bool, str]:
    store = SqliteStore(str(run.db))
    try:
        status = collect_status(store)
    finally:
        store.close()
    left = {
        "dead letters": status.dead_letter_count,
        "events set aside": status.failed_events,
        "events in the inbox": status.backlog,
        "pending changes": status.pending_changes,
        "Events API events waiting": status.pending_events,
    }
    return not any(left.values()), "nothing left over: " + ", ".join(f"{v} {k}" for k, v in left.items())


def verdicts(run: Run, emulator_url: str, stop_code: int, stop_secs: float) -> Lines:
    state = emulator_state(emulator_url, members=True)
    return [
        *membership_lines(run, state),
        *order_lines(run, state),
        leftover_line(run),
        (stop_code == 0, f"segcrit exited {stop_code} on SIGTERM after {stop_secs:.1f} s"),
    ]


Stream = tuple[EngageTraffic | TrackingTraffic, TrackingSender | WebhookSender]


def streams_for(run: Run, url: str, deadline: float) -> list[Stream]:
    """`--senders` Tracking API streams and as many webhook streams, event times in the past."""
    t0 = time.time() - 6 * 3600  # one second per request of a stream: hours of room
    streams: list[Stream] = []
    for i in range(run.args.senders):
        tracking = TrackingSender(url, WRITE_KEY, run.tally, deadline, max_retries=run.args.segment_max_retries)
        webhook = WebhookSender(f"{url}/webhooks/engage", SECRET, run.tally, deadline, random.Random(run.rng.random()))
        streams += [(TrackingTraffic(f"t{i}", t0), tracking), (EngageTraffic(f"w{i}", t0), webhook)]
    return streams


def torture(run: Run) -> Lines:
    args = run.args
    started = time.monotonic()
    deadline = started + args.timeout_secs
    emulator_url, emulator = start_emulator(run.folder)
    serve_log = (run.folder / "serve.log").open("ab")
    port = free_port()
    config = run.folder / "segcrit.yaml"
    config.write_text(
        CONFIG.format(
            db=run.db,
            port=port,
            sources=sources_section(WRITE_KEY, SECRET),
            criteo=criteo_section(emulator_url, caller_id="torture", extra=UNLIMITED),
        )
    )
    serve = Serve(f"http://127.0.0.1:{port}", config, serve_log)
    stop = threading.Event()
    failures: list[BaseException] = []
    streams = streams_for(run, serve.url, deadline)
    threads = [
        threading.Thread(
            target=run_stream,
            args=(traffic, sender, run.expected),
            kwargs={"stop": stop, "requests": None, "failures": failures, "pace_secs": args.pace_secs},
            daemon=True,
        )
        for traffic, sender in streams
    ]
    try:
        for thread in threads:
            thread.start()
        kill_at_random_moments(run, serve, emulator, emulator_url, failures)
        traffic_secs = time.monotonic() - started
        stop.set()
        serve.spawn()
        serve.wait_ready()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if failures or any(t.is_alive() for t in threads):
            raise TortureFailed(f"the senders did not finish: {failures[:1]!r}")
        last_ack = time.monotonic()
        settled = wait_converged(run, emulator_url, min(deadline, last_ack + args.drain_secs))
        drain_secs = time.monotonic() - last_ack
        code, stop_secs = serve.terminate()
        converged_line = (
            f"Criteo converged {drain_secs:.1f} s after the last request was acknowledged"
            if settled
            else f"Criteo did not converge within {drain_secs:.0f} s of the last acknowledgement"
        )
        lines = [(settled, converged_line), *verdicts(run, emulator_url, code, stop_secs)]
        print_figures(run, traffic_secs, drain_secs, time.monotonic() - started)
        return lines
    finally:
        stop.set()
        if serve.process is not None and serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait(10)
        for _, sender in streams:
            sender.close()
        serve_log.close()
        emulator.terminate()
        emulator.wait(10)


def print_figures(run: Run, traffic_secs: float, drain_secs: float, elapsed: float) -> None:
    args, tally, expected = run.args, run.tally, run.expected
    serving = len(run.kills) - run.startup_kills
    up = sum(run.up_secs) / len(run.up_secs) if run.up_secs else 0.0
    print(f"seed {args.seed} (repeat with --seed {args.seed})")
    print(
        f"kills: {len(run.kills)} with SIGKILL ({serving} while serving, {run.startup_kills} during startup); "
        f"up {up:.2f} s on average before a kill while serving"
    )
    print(
        f"traffic: {args.senders} Tracking API + {args.senders} webhook senders; {expected.requests:,} requests "
        f"acknowledged carrying {expected.events:,} events ({len(expected.orders):,} orders); {tally.attempts:,} "
        f"attempts, {tally.retries:,} retries (Segment's library gave up {tally.given_up:,} times after "
        f"{args.segment_max_retries} retries: sent again)"
    )
    caught, forgotten = lost_answer_kills(run.kills)
    print(
        f"contact lists: {caught} kills came between Criteo applying a call and segcrit recording it; at {forgotten} "
        "of them segcrit's store had already lost track of the change (the person changed during the call)"
    )
    print(f"elapsed: {elapsed:.0f} s (traffic and kills {traffic_secs:.0f} s, then drain {drain_secs:.1f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--senders", type=int, default=3, help="Tracking API senders, and as many webhook senders")
    parser.add_argument("--pace-secs", type=float, default=0.25, help="at most one request per sender this often")
    parser.add_argument("--max-up-secs", type=float, default=3.0)
    parser.add_argument(
        "--segment-max-retries", type=int, default=3, help="Segment's library: retries before it gives up on a batch"
    )
    parser.add_argument("--startup-share", type=float, default=0.15)
    parser.add_argument("--drain-secs", type=float, default=60.0, help="for Criteo to converge after the traffic")
    parser.add_argument("--timeout-secs", type=float, default=1800.0, help="for the whole run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (store and logs)")
    args = parser.parse_args()
    # The library logs every batch it gives up on; here that is expected and counted instead.
    logging.getLogger("segment").setLevel(logging.CRITICAL)
    # SIGTERM (a CI timeout) runs the clean-up as Ctrl-C does: no segcrit or emulator left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.seed is None:
        args.seed = random.randrange(2**32)
    folder = Path(tempfile.mkdtemp(prefix="segcrit-torture-"))
    run = Run(args, folder, random.Random(args.seed))
    print(f"torture: {args.kills} kills, seed {args.seed}, folder {folder}", file=sys.stderr, flush=True)
    try:
        lines = torture(run)
    except TortureFailed as failure:
        lines = [(False, str(failure))]
    except httpx.HTTPError as error:  # the emulator stopped answering
        lines = [(False, f"the emulator did not answer: {error!r} (see emulator.log)")]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print("kill -9 torture (SPEC §7):")
    for ok, line in lines:
        print(f"{'PASS' if ok else 'MISS'} {line}")
    failed = not all(ok for ok, _ in lines)
    if failed or args.keep:
        print(f"store and logs kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
