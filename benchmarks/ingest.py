"""Ingest benchmark (SPEC §9): `/v1/batch` of 100 realistic events, acked after the durable commit,
against its ceiling measured in the same run on the same load.

    .venv/bin/python benchmarks/ingest.py [--seconds 15] [--concurrency 16] [--clients 4] [--rounds 1]

Starts, each in a temporary folder and as a subprocess:

- a bare Starlette app under uvicorn with the same settings as `segcrit serve`
  (`segcrit.cli.uvicorn_options`, `tune_runtime`) whose `/v1/batch` only reads the body, parses it with
  orjson and answers 200: the ceiling that the HTTP stack alone sets on this machine;
- `segcrit emulator` (or, with `--criteo closed`, nothing: the API URL is then a closed loopback
  port), so that the server's delivery thread runs as it does in production;
- `segcrit serve` with a SQLite store, one `tracking_api` source and the `audience_sync` flow: its
  processor and delivery threads run and compete for the CPU with ingest.

Against each in turn (the bare app first, then segcrit; `--rounds` repeats the pair, alternating
which goes first, and reports medians), `--clients` load processes keep `--concurrency` requests
in flight in total, for `--warmup` seconds then `--seconds` measured seconds; `--rate` paces them
to an offered load instead (to see processing keep up below saturation). The load generator is a
few lines of HTTP/1.1 over asyncio streams on keep-alive connections, not an HTTP library: it
must not be the bottleneck (its CPU is reported). Every batch holds fresh messageIds (a duplicate
would skip the insert); bodies are ~88 KB (bench_events: full context, properties, traits).

Reported: accepted events/s (events of 200 answers completed inside the window), p50/p95/p99 ack
latency, the CPU the servers and the clients used and what other processes used meanwhile (the
machine is shared: read a run with much "other" load with care), for segcrit the processing rate
and backlog, and segcrit/bare. Targets (SPEC §9): segcrit/bare >= 0.3 and p99 ack <= 100 ms.
Then, once the servers have stopped, what segcrit's own work on a body costs without a server
(`pipeline_alone`: parse, prepare and rows on one thread, µs per event) and the segcrit/bare it
would allow: a figure that moves with the code, not with the server's threads and the machine's
other load, and tells a slow pipeline from a slow server. With `--sustained`, last, the highest
offered rate (`--rate`) that one node sustains: every request acknowledged, p99 ack within the
target, and processing keeping up (it processed 95 % of what was accepted), found by bisection
below the saturated rate, one fresh server per paced run. The last lines are `RESULT name=value`
(benchmarks/compare.py reads them).

`--py-spy FILE` samples `segcrit serve` with py-spy during the measured window (raw collapsed
stacks, one line per stack, for a flame graph or a grep). Bounded: every wait has a deadline, and
subprocesses are terminated (then killed) on the way out, Ctrl-C and SIGTERM included. `--check`
makes a MISS exit with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_events import EventFactory, Population

TARGET_RATIO = 0.3
TARGET_P99_MS = 100.0
WRITE_KEY = "bench-write-key"
START_DEADLINE_SECS = 30.0
STOP_DEADLINE_SECS = 15.0
REQUEST_TIMEOUT_SECS = 30.0
TEMPLATES_PER_CLIENT = 128
MID_MARKER = "__MID__"
PIPELINE_BATCHES = 20  # bodies timed by `pipeline_alone`
PIPELINE_REPEATS = 15  # it reports the best pass (the machine is shared)
SUSTAINED_STEPS = 6  # paced runs of the --sustained search (a bisection: 1/64 of the range)
KEEP_UP_SHARE = 0.95  # processing keeps up: it processed this share of what was accepted
SUSTAINED_DEFAULT_HIGH = 40_000.0  # --sustained without a saturated segcrit run to start from
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = """\
store: {store}
server: {{host: 127.0.0.1, port: {port}}}
sources:
  - {{name: web, type: tracking_api, write_key: {write_key}}}
criteo:
  client_id: demo-client
  client_secret: demo-secret
  advertiser_id: "12345"
  api_url: {api_url}
identity:
  send: [email, madid]
flows:
  - type: audience_sync
"""


# ---------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def cpu_seconds(self) -> float:
        """User + system CPU of the process (all its threads) so far."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_DEADLINE_SECS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (every core), from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def start_process(name: str, command: list[str], folder: Path) -> Proc:
    log_path = folder / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    return Proc(name, process, log_path)


def wait_ready(proc: Proc, url: str, deadline_secs: float = START_DEADLINE_SECS) -> None:
    end = time.monotonic() + deadline_secs
    while time.monotonic() < end:
        if proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready after {deadline_secs:.0f} s:\n{proc.log_tail()}")


def segcrit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "segcrit", *args]


# ---------------------------------------------------------------------------------------- the bare app


def serve_bare(port: int) -> None:
    """The baseline: the same uvicorn settings as `segcrit serve`, no work but reading and parsing."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from segcrit.cli import tune_runtime, uvicorn_options

    success = orjson.dumps({"success": True})

    async def batch(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(success, media_type="application/json")

    async def readyz(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    app = Starlette(routes=[Route("/v1/batch", batch, methods=["POST"]), Route("/readyz", readyz)])
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options("127.0.0.1", port)))
    tune_runtime()
    server.run()


# ---------------------------------------------------------------------------------------- load clients


@dataclass
class ClientResult:
    latencies_ms: list[float] = field(default_factory=list)
    events: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    cpu_secs: float = 0.0
    body_bytes: int = 0


def build_templates(client_index: int, events_per_batch: int, population: int) -> list[list[bytes]]:
    """Batch bodies split where each messageId goes, so that every request gets fresh ones cheaply."""
    factory = EventFactory(Population(population), seed=1000 + client_index)
    templates = []
    for _ in range(TEMPLATES_PER_CLIENT):
        batch = []
        for _ in range(events_per_batch):
            message = factory.message()
            message["messageId"] = MID_MARKER
            batch.append(message)
        sent_at = factory.now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = orjson.dumps({"batch": batch, "sentAt": sent_at})
        templates.append(body.split(MID_MARKER.encode()))
    return templates


def fill_template(parts: list[bytes], message_ids: Iterable[bytes]) -> bytes:
    """A template's body with these messageIds in its places (one between each two parts)."""
    out = [parts[0]]
    for message_id, part in zip(message_ids, parts[1:], strict=True):
        out += (message_id, part)
    return b"".join(out)


def client_main(index: int, url: str, concurrency: int, args: dict[str, Any], t0: float, t1: float, out: Any) -> None:
    """One load process: `concurrency` requests in flight until t1 (monotonic; t0 starts the window)."""
    result = ClientResult()
    try:
        try:
            import uvloop  # a cheaper event loop: the client's CPU is taken from the servers'
        except ImportError:
            asyncio.run(_client(index, url, concurrency, args, t0, t1, result))
        else:
            uvloop.run(_client(index, url, concurrency, args, t0, t1, result))
    except Exception as exc:  # report instead of dying silently
        result.errors[f"client crashed: {exc!r}"] = 1
    out.put((index, result))


class HttpError(Exception):
    """The server answered something this client does not read (or closed the connection)."""


class Connection:
    """One keep-alive HTTP/1.1 connection: POST a body, read the status and the whole answer.

    Enough HTTP for two servers we know (uvicorn answers with Content-Length), and a fraction of
    an HTTP library's CPU per request."""

    def __init__(self, host: str, port: int, head: bytes) -> None:
        self._host = host
        self._port = port
        self._head = head  # request line and headers up to "Content-Length: "
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> int:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        try:
            self._writer.write(self._head + b"%d\r\n\r\n" % len(body) + body)
            head = await self._reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lowered = head.lower()
            at = lowered.find(b"\r\ncontent-length:")
            if at < 0:
                raise HttpError("answer without Content-Length")
            length = int(lowered[at + 17 : lowered.index(b"\r\n", at + 2)])
            await self._reader.readexactly(length)
            if b"\r\nconnection: close" in lowered:
                self.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise HttpError(type(exc).__name__) from None
        except HttpError:
            self.close()
            raise
        return status

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _client(
    index: int, url: str, concurrency: int, args: dict[str, Any], t0: float, t1: float, result: ClientResult
) -> None:
    target = urlsplit(url)
    host, port, path = target.hostname or "127.0.0.1", target.port or 80, target.path or "/"
    templates = build_templates(index, args["events_per_batch"], args["population"])
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    salt = random.SystemRandom().getrandbits(24)
    counter = itertools.count()
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic {auth}\r\n"
        "Content-Type: application/json\r\nUser-Agent: segcrit-bench\r\nContent-Length: "
    ).encode()

    def next_body() -> bytes:
        n = next(counter)
        parts = templates[n % len(templates)]
        return fill_template(
            parts, (b"ajs-next-%02x%06x%016x%08x" % (index, salt, n, i) for i in range(len(parts) - 1))
        )

    async def worker(slot: int) -> None:
        connection = Connection(host, port, head)
        interval = args["interval"]  # between this worker's requests with --rate, else 0
        due = t0 - args["warmup"] + interval * slot / concurrency
        while (start := time.monotonic()) < t1:
            if interval:
                if due > start:
                    await asyncio.sleep(due - start)
                    start = time.monotonic()
                due = max(due + interval, start)  # behind schedule: no burst to catch up
            body = next_body()
            status: int | None = None
            try:
                status = await asyncio.wait_for(connection.post(body), REQUEST_TIMEOUT_SECS)
            except HttpError as exc:
                error = str(exc)
            except TimeoutError:
                connection.close()
                error = "timeout"
            end = time.monotonic()
            if not t0 <= end <= t1:
                continue
            if status is None:
                result.errors[error] = result.errors.get(error, 0) + 1
                continue
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.events += args["events_per_batch"]
                result.latencies_ms.append((end - start) * 1000)
                result.body_bytes += len(body)
        connection.close()

    # Wait for the agreed start (every client builds its templates first), minus the warm-up.
    await asyncio.sleep(max(0.0, t0 - args["warmup"] - time.monotonic()))
    await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    after = resource.getrusage(resource.RUSAGE_SELF)
    # Only the load itself: building the templates is not part of the run.
    result.cpu_secs = after.ru_utime + after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime


def run_load(
    url: str | list[str], args: argparse.Namespace, samplers: list[Proc], metrics_url: str | list[str] | None
) -> dict[str, Any]:
    """The load against `url`; with several URLs (servers sharing one store), client process i sends
    to url i mod len(urls), and the processing figures add up each server's `metrics_url`."""
    urls = [url] if isinstance(url, str) else url
    metrics_urls = [] if metrics_url is None else [metrics_url] if isinstance(metrics_url, str) else metrics_url
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    setup = 3.0 + 0.5 * args.clients  # spawn + import + templates, before the warm-up starts
    t0 = time.monotonic() + setup + args.warmup
    t1 = t0 + args.seconds
    shares = [args.concurrency // args.clients + (i < args.concurrency % args.clients) for i in range(args.clients)]
    # With --rate, every one of the `concurrency` workers sends a request each `interval` seconds.
    interval = args.concurrency * args.events_per_batch / args.rate if args.rate else 0.0
    params = {
        "events_per_batch": args.events_per_batch,
        "population": args.population,
        "warmup": args.warmup,
        "interval": interval,
    }
    clients = [
        ctx.Process(target=client_main, args=(i, urls[i % len(urls)], n, params, t0, t1, out), daemon=True)
        for i, n in enumerate(shares)
        if n > 0
    ]
    for c in clients:
        c.start()
    profiler: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(max(0.0, t0 - time.monotonic()))
        if getattr(args, "py_spy", None) and metrics_urls:
            profiler = start_py_spy(samplers[0].process.pid, args.seconds, args.py_spy)
        cpu0 = [p.cpu_seconds() for p in samplers]
        busy0 = machine_busy_seconds()
        m0 = scrape_all(metrics_urls)
        time.sleep(max(0.0, t1 - time.monotonic()))
        cpu1 = [p.cpu_seconds() for p in samplers]
        busy1 = machine_busy_seconds()
        m1 = scrape_all(metrics_urls)
        results: list[ClientResult] = []
        deadline = time.monotonic() + 45
        while len(results) < len(clients) and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                results.append(out.get(timeout=1)[1])
        if len(results) < len(clients):
            raise RuntimeError("a load client did not report in time")
    finally:
        for c in clients:
            c.join(5)
            if c.is_alive():
                c.kill()
        if profiler is not None:
            try:
                profiler.wait(30)
            except subprocess.TimeoutExpired:
                profiler.kill()
    latencies = sorted(x for r in results for x in r.latencies_ms)
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
        for e, v in r.errors.items():
            errors[e] = errors.get(e, 0) + v
    events = sum(r.events for r in results)
    requests = len(latencies)
    return {
        "events_per_sec": events / args.seconds,
        "requests_per_sec": requests / args.seconds,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "max": latencies[-1] if latencies else float("nan"),
        "statuses": statuses,
        "errors": errors,
        "avg_body_kb": sum(r.body_bytes for r in results) / max(1, requests) / 1000,
        "client_cpu": sum(r.cpu_secs for r in results) / (args.seconds + args.warmup),
        "machine_busy": (busy1 - busy0) / args.seconds,
        "cpu": {p.name: (c1 - c0) / args.seconds for p, c0, c1 in zip(samplers, cpu0, cpu1, strict=True)},
        "processed_per_sec": (m1.get("processed", 0) - m0.get("processed", 0)) / args.seconds if m0 else None,
        "backlog_end": m1.get("backlog"),
    }


def start_py_spy(pid: int, seconds: float, output: str) -> subprocess.Popen[bytes] | None:
    """py-spy sampling `pid` for `seconds` into `output` (raw collapsed stacks), or None without py-spy."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found (pip install py-spy): no profile", file=sys.stderr)
        return None
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "250"]
    command += ["--format", "raw", "--threads", "--nonblocking", "--output", str(Path(output).resolve())]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(p * 10) - 1]


def scrape_all(urls: list[str]) -> dict[str, float]:
    """`scrape` of every server: events processed add up; the backlog is the store's (the largest
    figure: on PostgreSQL every server reports the whole database's)."""
    found = [m for m in (scrape(u) for u in urls) if m]
    if not found:
        return {}
    return {"processed": sum(m["processed"] for m in found), "backlog": max(m["backlog"] for m in found)}


_METRIC = re.compile(rb"^(segcrit_events_processed_total|segcrit_backlog_events) ([0-9.e+]+)$", re.M)


def scrape(url: str | None) -> dict[str, float]:
    if url is None:
        return {}
    try:
        text = httpx.get(url, timeout=5).content
    except httpx.HTTPError:
        return {}
    found = {m.group(1): float(m.group(2)) for m in _METRIC.finditer(text)}
    return {
        "processed": found.get(b"segcrit_events_processed_total", 0.0),
        "backlog": found.get(b"segcrit_backlog_events", 0.0),
    }


# ---------------------------------------------------------------------------------------- main


def bench_segcrit(args: argparse.Namespace, folder: Path, procs: list[Proc]) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    samplers: list[Proc] = []
    if args.criteo == "emulator":
        emulator_port = free_port()
        emulator = start_process("emulator", segcrit_command("emulator", "--port", str(emulator_port)), folder)
        procs.append(emulator)
        api_url = f"http://127.0.0.1:{emulator_port}"
        wait_ready(emulator, f"{api_url}/_emulator/state")
        samplers.append(emulator)
    else:
        api_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: delivery fails and backs off
    port = free_port()
    config = folder / "segcrit.yaml"
    config.write_text(CONFIG.format(store="sqlite:///segcrit.db", port=port, write_key=WRITE_KEY, api_url=api_url))
    server = start_process("segcrit", segcrit_command("serve", "--config", str(config)), folder)
    procs.append(server)
    base = f"http://127.0.0.1:{port}"
    wait_ready(server, f"{base}/readyz")
    result = run_load(f"{base}/v1/batch", args, [server, *samplers], f"{base}/metrics")
    for proc in (server, *samplers):
        proc.stop()
    result["exit"] = server.process.returncode
    return result


def bench_bare(args: argparse.Namespace, folder: Path, procs: list[Proc]) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_process("bare", [sys.executable, str(Path(__file__).resolve()), "--bare-server", str(port)], folder)
    procs.append(server)
    base = f"http://127.0.0.1:{port}"
    wait_ready(server, f"{base}/readyz")
    result = run_load(f"{base}/v1/batch", args, [server], None)
    server.stop()
    return result


def report(name: str, r: dict[str, Any]) -> None:
    cpu = ", ".join(f"{k} {v * 100:.0f}%" for k, v in r["cpu"].items())
    # CPU per event: what the server's code costs, whatever share of the machine it got.
    server_cpu = next(iter(r["cpu"].values()))
    per_event = server_cpu / r["events_per_sec"] * 1e6 if r["events_per_sec"] else float("nan")
    others = r["machine_busy"] - sum(r["cpu"].values()) - r["client_cpu"]
    print(
        f"{name:8} {r['events_per_sec']:>9,.0f} events/s  ({r['requests_per_sec']:.1f} req/s, "
        f"{r['avg_body_kb']:.1f} KB/request)\n"
        f"         ack latency ms: p50 {r['p50']:.1f}  p95 {r['p95']:.1f}  p99 {r['p99']:.1f}  max {r['max']:.1f}\n"
        f"         statuses {r['statuses']}  errors {r['errors'] or 'none'}\n"
        f"         CPU (of one core): {cpu} ({per_event:.0f} us per event), load clients "
        f"{r['client_cpu'] * 100:.0f}%; "
        f"machine {r['machine_busy'] * 100:.0f}% of {os.cpu_count() or 0}00% busy, "
        f"so about {max(0.0, others) * 100:.0f}% by other processes"
    )
    if r.get("processed_per_sec") is not None:
        print(
            f"         processed meanwhile: {r['processed_per_sec']:,.0f} events/s, "
            f"backlog at the end {r['backlog_end']:,.0f}"
        )


def pipeline_alone(events_per_batch: int, population: int) -> dict[str, float]:
    """µs per event of what segcrit does to a body on its event loop, in this process on one thread,
    with no HTTP and no store: parse (`parse_json`), prepare (`prepare_messages`, the Tracking API's
    rules) and serialise the rows. Against it, the parse that the bare server does (`orjson.loads`)
    on the same bodies. Best of PIPELINE_REPEATS passes over PIPELINE_BATCHES bodies. Their ratio
    bounds what segcrit/bare can reach while this work runs on one thread, whatever the server
    around it does. Imports the segcrit on PYTHONPATH (compare.py: REF's or HEAD's)."""
    from segcrit import cli
    from segcrit.sources.limits import parse_json
    from segcrit.sources.validate import TRACKING_TYPES, MessageRules, prepare_messages

    # The server's collector settings (older code named the function tune_gc).
    tune = getattr(cli, "tune_runtime", None) or getattr(cli, "tune_gc", None)
    if tune is not None:
        tune()
    rules = MessageRules(types=TRACKING_TYPES, max_message_bytes=32_768)
    templates = build_templates(0, events_per_batch, population)[:PIPELINE_BATCHES]
    bodies = [
        fill_template(parts, (b"pipeline-%d-%d" % (n, i) for i in range(len(parts) - 1)))
        for n, parts in enumerate(templates)
    ]
    events = len(bodies) * events_per_batch

    def best(stage: Any) -> float:
        times = []
        for _ in range(PIPELINE_REPEATS):
            start = time.perf_counter()
            for body in bodies:
                stage(body)
            times.append(time.perf_counter() - start)
        return min(times) / events * 1e6

    def prepare(body: bytes) -> Any:
        parsed = parse_json(body)
        return prepare_messages(parsed["batch"], rules, received_at=time.time(), sent_at=None)

    def rows(body: bytes) -> Any:
        return [(str(m.get("messageId") or ""), orjson.dumps(m)) for m in prepare(body).messages]

    bare = best(orjson.loads)
    parse = best(parse_json)
    prepared = best(prepare)
    total = best(rows)
    return {"bare": bare, "parse": parse, "prepare": prepared - parse, "rows": total - prepared, "total": total}


def report_pipeline(pipeline: dict[str, float], bare_events_per_sec: float | None) -> None:
    print(
        f"pipeline alone (one thread, no HTTP, no store): parse {pipeline['parse']:.1f} + prepare "
        f"{pipeline['prepare']:.1f} + rows {pipeline['rows']:.1f} = {pipeline['total']:.1f} us/event; "
        f"the bare server's parse {pipeline['bare']:.1f} us/event"
    )
    if bare_events_per_sec:
        # The bare server spends 1e6 / bare_events_per_sec µs per event; segcrit at least that
        # minus the bare parse, plus its own pipeline, while the pipeline holds the one thread.
        bare_us = 1e6 / bare_events_per_sec
        bound = bare_us / (bare_us - pipeline["bare"] + pipeline["total"])
        print(
            f"         so with this work on one thread, segcrit/bare is at most {bound:.2f} "
            f"(the bare server's {bare_us:.1f} us/event, its parse replaced by the pipeline)"
        )


def stop_all(procs: list[Proc]) -> None:
    """Stop what a run started (a process already stopped is left as it is) and forget it."""
    for p in procs:
        p.stop()
    procs.clear()


def sustains(r: dict[str, Any], rate: float) -> str | None:
    """Why a paced run at `rate` offered events/s is not sustained, or None when it is: every
    request acknowledged with 200, the offered rate accepted, processing keeping up with it, and p99
    ack within the target."""
    accepted = r["events_per_sec"]
    if r["errors"] or set(r["statuses"]) - {200}:
        return "answers other than 200"
    if accepted < KEEP_UP_SHARE * rate:
        return f"accepted {accepted:,.0f} events/s"
    processed = r.get("processed_per_sec") or 0.0
    if processed < KEEP_UP_SHARE * accepted:
        return f"processed {processed:,.0f} events/s"
    if r["p99"] > TARGET_P99_MS:
        return f"p99 {r['p99']:.1f} ms"
    return None


def find_sustained(args: argparse.Namespace, folder: Path, procs: list[Proc], high: float) -> float:
    """The highest offered rate (events/s, within `high` / 2**SUSTAINED_STEPS) that `sustains`, by
    bisection between 0 and `high`: a fresh server for each paced run of `--sustained-seconds`."""
    low = 0.0
    for step in range(SUSTAINED_STEPS):
        rate = round((low + high) / 2, -2) or 100.0
        paced = argparse.Namespace(**{**vars(args), "rate": rate, "seconds": args.sustained_seconds, "py_spy": None})
        r = bench_segcrit(paced, folder / f"sustained-{step}", procs)
        stop_all(procs)
        why = sustains(r, rate)
        processed = r.get("processed_per_sec") or 0.0
        print(
            f"  offered {rate:>9,.0f} events/s: accepted {r['events_per_sec']:,.0f}, processed {processed:,.0f}, "
            f"p99 ack {r['p99']:.1f} ms: " + ("sustained" if why is None else f"not sustained ({why})"),
            flush=True,
        )
        if why is None:
            low = rate
        else:
            high = rate
    return low


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median events/s (the figures of one run stay together)."""
    return sorted(runs, key=lambda r: r["events_per_sec"])[(len(runs) - 1) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per target")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight, all clients together")
    parser.add_argument("--events-per-batch", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before the window")
    parser.add_argument("--clients", type=int, default=4, help="load-generating processes")
    parser.add_argument("--rounds", type=int, default=1, help="bare + segcrit pairs (medians are reported)")
    parser.add_argument(
        "--rate", type=float, default=0, help="offered events/s (paced); default: as fast as acks come back"
    )
    parser.add_argument("--population", type=int, default=200_000, help="distinct people in the events")
    parser.add_argument("--criteo", choices=["emulator", "closed"], default="emulator")
    parser.add_argument("--only", choices=["both", "segcrit", "bare"], default="both")
    parser.add_argument(
        "--sustained",
        action="store_true",
        help="then find the highest offered rate that is acknowledged with p99 <= 100 ms while processing keeps up",
    )
    parser.add_argument("--sustained-seconds", type=float, default=10, help="measured seconds per --sustained run")
    parser.add_argument("--py-spy", metavar="FILE", help="profile segcrit serve into FILE (py-spy raw format)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (database, logs)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        serve_bare(args.bare_server)
        return 0

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    folder = Path(tempfile.mkdtemp(prefix="segcrit-bench-"))
    procs: list[Proc] = []
    runs: dict[str, list[dict[str, Any]]] = {"segcrit": [], "bare": []}
    sustained: float | None = None
    benches = {"segcrit": bench_segcrit, "bare": bench_bare}
    targets = ["bare", "segcrit"] if args.only == "both" else [args.only]
    print(
        f"ingest benchmark: {args.seconds:g} s measured (+{args.warmup:g} s warm-up) per target and round, "
        f"{args.rounds} round(s), concurrency {args.concurrency} over {args.clients} client process(es), "
        f"{args.events_per_batch} events/batch, "
        + (f"offered {args.rate:,.0f} events/s, " if args.rate else "")
        + f"criteo={args.criteo}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    try:
        for round_no in range(args.rounds):
            # Alternate which goes first, so that a drift in the machine's load favours neither.
            for name in targets if round_no % 2 == 0 else targets[::-1]:
                runs[name].append(benches[name](args, folder / f"{name}-{round_no}", procs))
                stop_all(procs)
        if args.sustained:
            # Up to the saturated rate measured above (at most what was accepted), else 40,000.
            high = max((r["events_per_sec"] for r in runs["segcrit"]), default=SUSTAINED_DEFAULT_HIGH)
            print(f"sustained rate: bisection between 0 and {high:,.0f} events/s offered", flush=True)
            sustained = find_sustained(args, folder, procs, high)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        for p in reversed(procs):
            p.stop()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)

    results = {name: median_run(r) for name, r in runs.items() if r}
    # After the servers stopped: the machine is as quiet as this benchmark can make it.
    pipeline = pipeline_alone(args.events_per_batch, args.population) if "segcrit" in results else None
    # segcrit first: compare.py (and older readers) take the first "p99" of the output as segcrit's.
    for name in ("segcrit", "bare"):
        if name in results:
            if args.rounds > 1:
                each = ", ".join(f"{r['events_per_sec']:,.0f}" for r in runs[name])
                print(f"({name}: events/s of each round {each}; the median round below)")
            report(name, results[name])
    ratio = None
    if "segcrit" in results and "bare" in results and results["bare"]["events_per_sec"]:
        ratio = results["segcrit"]["events_per_sec"] / results["bare"]["events_per_sec"]
        print(f"segcrit/bare throughput: {ratio:.2f}")
    if pipeline is not None:
        report_pipeline(pipeline, results["bare"]["events_per_sec"] if "bare" in results else None)
    if sustained is not None:
        share = ""
        if "bare" in results and results["bare"]["events_per_sec"]:
            share = f" = {sustained / results['bare']['events_per_sec']:.2f} of the bare server's events/s"
        print(
            f"sustained: up to {sustained:,.0f} events/s offered, acknowledged with p99 <= {TARGET_P99_MS:g} ms "
            f"while processing keeps up{share}"
        )
    ok = True
    if "segcrit" in results:
        r = results["segcrit"]
        if ratio is not None and not (args.rate and args.rate < results["bare"]["events_per_sec"] * TARGET_RATIO):
            ok_ratio = ratio >= TARGET_RATIO
            ok = ok and ok_ratio
            print(
                f"{'PASS' if ok_ratio else 'MISS'} throughput {r['events_per_sec']:,.0f} events/s = {ratio:.2f} "
                f"of the bare server's {results['bare']['events_per_sec']:,.0f} (target >= {TARGET_RATIO})"
            )
        elif ratio is not None:
            print(f"---- throughput not tested: --rate {args.rate:,.0f} is below the target")
        ok_p99 = r["p99"] <= TARGET_P99_MS
        ok = ok and ok_p99
        print(f"{'PASS' if ok_p99 else 'MISS'} p99 ack {r['p99']:.1f} ms (target <= {TARGET_P99_MS:g})")
    for name, r in results.items():
        print(f"RESULT ingest_{name}_events_per_sec={r['events_per_sec']:.0f}")
        print(f"RESULT ingest_{name}_p99_ms={r['p99']:.1f}")
        print(f"RESULT ingest_{name}_client_cpu_pct={r['client_cpu'] * 100:.0f}")
    if ratio is not None:
        print(f"RESULT ingest_ratio_to_bare={ratio:.3f}")
    if pipeline is not None:
        print(f"RESULT ingest_pipeline_us_per_event={pipeline['total']:.1f}")
    if sustained is not None:
        print(f"RESULT ingest_sustained_events_per_sec={sustained:.0f}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
