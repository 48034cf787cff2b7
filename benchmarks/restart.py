"""Restart after a crash with a large backlog (SPEC §9: serving again in <= 5 s with 1M pending changes),
and memory with 1M profiles stored (SPEC §9: <= 256 MB RSS).

Builds a store holding N profiles, each with an identifier and a pending audience change, and an
inbox backlog; starts `segcrit serve` on it, lets it work for `--crash-after` seconds and kills it
with SIGKILL (its processor child exits with it), then starts it again as a subprocess and measures
the time until `/readyz` answers 200 and a `/v1/batch` request is acknowledged. Criteo is a closed
loopback port: delivery keeps failing and retrying in the background, as it would during an outage,
while ingest must serve. Then, for 10 s of work on the backlog, the peak RSS of the server: the
`serve` process and its children (the processor child on SQLite) together.

    .venv/bin/python benchmarks/restart.py [--changes 1000000] [--inbox 100000] [--crash-after 3] [--cold]

`--cold` also empties the kernel's page cache after the kill (as a reboot of the machine would;
needs root, for /proc/sys/vm/drop_caches), so that what the start reads comes from the disk.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import free_port
from segcrit.store.sqlite import SqliteStore

TARGET_SECS = 5.0
TARGET_RSS_MB = 256.0
CONFIG = """\
store: sqlite:///{db}
server: {{host: 127.0.0.1, port: {port}}}
sources:
  - {{name: web, type: tracking_api, write_key: WK}}
criteo:
  client_id: c
  client_secret: s
  advertiser_id: "12345"
  api_url: http://127.0.0.1:9
flows:
  - type: audience_sync
"""


def fill(db: Path, changes: int, inbox: int) -> None:
    store = SqliteStore(str(db))
    conn = store._conn()  # bulk generation only; what is measured is the server's start
    now = time.time()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO targets (audience, id_type, id_value, profile_id, desired, since) VALUES (?, 'email', ?, ?, 1, ?)",
        ((f"aud{i % 5}", f"{i:064x}", i, now) for i in range(changes)),
    )
    body = orjson.dumps({"type": "track", "event": "x", "userId": "u", "_segcrit": {"ts": now}})
    conn.executemany(
        "INSERT INTO profiles (id, created_at, last_seen_at) VALUES (?, ?, ?)", ((i, now, now) for i in range(changes))
    )
    conn.executemany(
        "INSERT INTO identifiers (kind, value, profile_id) VALUES ('user_id', ?, ?)",
        ((f"user-{i}", i) for i in range(changes)),
    )
    conn.executemany(
        "INSERT INTO inbox (source, received_at, body) VALUES ('web', ?, ?)", ((now, body) for _ in range(inbox))
    )
    conn.execute("COMMIT")
    store.close()


def rss(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass  # gone meanwhile
    return 0.0


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # a child is listed under the thread that made it
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree_rss(pid: int) -> tuple[float, float]:
    """(RSS of the process, RSS of its children together) in MB."""
    return rss(pid), sum(rss(child) for child in children(pid))


def start(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "segcrit", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def drop_page_cache() -> None:
    """Write back and drop the kernel's page cache: the next reads of the store come from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as error:
        sys.exit(f"--cold needs root to drop the page cache: {error}")
    print("page cache dropped: the start reads the store from the disk")


def wait_ready(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--inbox", type=int, default=100_000)
    parser.add_argument("--crash-after", type=float, default=3.0, help="seconds of work before the SIGKILL")
    parser.add_argument("--cold", action="store_true", help="drop the page cache after the kill (root)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segcrit-restart-") as folder:
        db = Path(folder) / "segcrit.db"
        started = time.monotonic()
        fill(db, args.changes, args.inbox)
        print(
            f"store: {args.changes:,} pending changes, {args.inbox:,} events in the inbox "
            f"(built in {time.monotonic() - started:.1f} s, {db.stat().st_size / 1e6:.0f} MB)"
        )
        port = free_port()
        config = Path(folder) / "segcrit.yaml"
        config.write_text(CONFIG.format(db=db, port=port))
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": "Basic " + base64.b64encode(b"WK:").decode()}
        batch = {"batch": [{"type": "track", "event": "Restarted", "userId": "u1"}]}
        first = start(config)
        try:
            if not wait_ready(url, time.monotonic() + 60):
                print("MISS: the first server did not become ready within 60 s")
                return 1
            time.sleep(args.crash_after)  # at work: processing the inbox, delivery failing
            pending = first.pid, children(first.pid)
        finally:
            first.kill()  # the crash: SIGKILL, nothing flushed
            first.wait()
        print(
            f"killed serve (pid {pending[0]}, children {pending[1]}) with SIGKILL "
            f"after {args.crash_after:.0f} s of work"
        )
        if args.cold:
            drop_page_cache()
        started = time.monotonic()
        process = start(config)
        ready = acked = None
        rss_mb = (0.0, 0.0)
        try:
            deadline = started + 60
            while time.monotonic() < deadline and (ready is None or acked is None):
                try:
                    if ready is None and httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        ready = time.monotonic() - started
                    if ready is not None:
                        answer = httpx.post(f"{url}/v1/batch", json=batch, headers=auth, timeout=5)
                        acked = time.monotonic() - started if answer.status_code == 200 else None
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
            # Memory once the processor and the (failing) delivery have worked on the backlog.
            settle = time.monotonic() + 10
            while time.monotonic() < settle:
                now_rss = tree_rss(process.pid)
                if sum(now_rss) > sum(rss_mb):
                    rss_mb = now_rss
                time.sleep(0.5)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
    if ready is None or acked is None:
        print("MISS: the server did not serve within 60 s")
        return 1
    memory = sum(rss_mb)
    print(
        f"{'PASS' if memory <= TARGET_RSS_MB else 'MISS'} server peak RSS over 10 s of work on the backlog, "
        f"{args.changes:,} profiles stored: {memory:.0f} MB (serve {rss_mb[0]:.0f} MB + children {rss_mb[1]:.0f} MB; "
        f"target <= {TARGET_RSS_MB:.0f} MB)"
    )
    print(f"process start -> /readyz 200: {ready:.2f} s; -> first batch acknowledged: {acked:.2f} s")
    verdict = "PASS" if acked <= TARGET_SECS else "MISS"
    print(
        f"{verdict} serving again in {acked:.2f} s with {args.changes:,} pending changes "
        f"(target <= {TARGET_SECS:.0f} s)"
    )
    return 0 if verdict == "PASS" and memory <= TARGET_RSS_MB else 1


if __name__ == "__main__":
    sys.exit(main())
