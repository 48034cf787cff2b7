"""Compare benchmarks of a git ref with the working tree, side by side in one run.

    .venv/bin/python benchmarks/compare.py REF [--only ingest,processing] [--rounds 3] [--quick]

Absolute figures move from machine to machine and with whatever else the machine is doing, so a
change's effect is measured here rather than remembered: REF is checked out into a temporary git
worktree, and each benchmark runs alternately on REF's code (with REF's own benchmark script, or
with HEAD's for a benchmark that only puts HTTP load on a server, `same_script`) and on the
working tree's, `--rounds` times, REF first in odd rounds and second in even ones so that
a drift in machine load favours neither. Both use this virtualenv; REF's source comes first on
PYTHONPATH, so `import segcrit` (and `python -m segcrit` in servers the benchmarks start) loads
REF's code.

Each benchmark prints its figures as text; a line `RESULT name=value` is read when a script prints
one, otherwise the figures are read from the lines older scripts print (see BENCHMARKS). The
report gives, per figure, the median of the rounds on each side and HEAD/REF.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT_LINE = re.compile(r"^RESULT (\S+)=([-+0-9.eE,]+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Figure:
    """One number a benchmark prints: its name, where it is in the output, and which way is better."""

    name: str
    pattern: str  # a regex whose first group is the number (commas allowed)
    higher_is_better: bool = True


@dataclass(frozen=True)
class Benchmark:
    script: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    figures: tuple[Figure, ...]
    timeout_secs: float = 1800
    # Run HEAD's script on both sides: a benchmark that only drives servers over HTTP (ingest)
    # then puts the same load on REF's code as on HEAD's, whatever load generator REF had.
    same_script: bool = False


BENCHMARKS: dict[str, Benchmark] = {
    "ingest": Benchmark(
        "ingest.py",
        ("--seconds", "15", "--only", "segcrit", "--criteo", "closed", "--clients", "4", "--concurrency", "16"),
        ("--seconds", "5", "--warmup", "2", "--only", "segcrit", "--criteo", "closed", "--clients", "4"),
        (
            Figure("ingest events/s", r"^segcrit\s+([\d,]+) events/s"),
            Figure("ingest p99 ack ms", r"p99 ([\d.]+)", higher_is_better=False),
            Figure("ingest us CPU/event", r"\((\d+) us per event\)", higher_is_better=False),
            # What the processor got done while ingest was saturated (SQLite: its turns on the lock).
            Figure("ingest processed meanwhile/s", r"processed meanwhile: ([\d,]+) events/s"),
            # The same bodies through parse, prepare and rows on one thread, without the server.
            Figure(
                "ingest pipeline us/event", r"^RESULT ingest_pipeline_us_per_event=([\d.]+)", higher_is_better=False
            ),
        ),
        same_script=True,
    ),
    "processing": Benchmark(
        "processing.py",
        ("--events", "100000"),
        ("--events", "20000"),
        (
            Figure("processing events/s", r"^processed [\d,]+ events in [\d.]+ s: ([\d,]+) events/s"),
            Figure("processing us CPU/event", r"events/s, ([\d,]+) us CPU/event", higher_is_better=False),
        ),
    ),
    "postgres": Benchmark(
        "postgres.py",
        (),
        ("--ingest-secs", "4", "--warmup", "1", "--events", "10000", "--changes", "0"),
        tuple(
            Figure(name, rf"^RESULT {name}=([-+0-9.eE,]+)", higher_is_better="_ms" not in name)
            for setup in ("sqlite", "pgx1", "pgx2")
            for name in (
                f"{setup}_ingest_events_per_s",
                f"{setup}_ingest_p99_ack_ms",
                f"{setup}_processing_events_per_s",
            )
        ),
    ),
}


@dataclass
class Side:
    label: str
    source: Path  # the folder holding src/ and benchmarks/
    runs: dict[str, list[float]] = field(default_factory=dict)


def run_benchmark(side: Side, bench: Benchmark, quick: bool) -> dict[str, float]:
    """Run one benchmark script of `side` on `side`'s code; the figures it printed."""
    script = (ROOT if bench.same_script else side.source) / "benchmarks" / bench.script
    if not script.exists():
        print(f"  {side.label}: {bench.script} does not exist there, skipped")
        return {}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(side.source / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = bench.quick_args if quick else bench.args
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=side.source,
        env=env,
        capture_output=True,
        text=True,
        timeout=bench.timeout_secs,
        check=False,
    )
    output = done.stdout + done.stderr
    figures = parse_figures(output, bench.figures)
    shown = ", ".join(f"{k} {v:,.1f}" for k, v in figures.items()) or "no figures"
    print(f"  {side.label:4} {bench.script}: {shown} ({time.monotonic() - started:.0f} s, exit {done.returncode})")
    if not figures:
        print("    " + "\n    ".join(output.strip().splitlines()[-15:]))
    return figures


def parse_figures(output: str, figures: tuple[Figure, ...]) -> dict[str, float]:
    """`RESULT name=value` lines when the script prints them, else each figure's own pattern."""
    found = {name: float(value.replace(",", "")) for name, value in RESULT_LINE.findall(output)}
    for figure in figures:
        if figure.name in found:
            continue
        match = re.search(figure.pattern, output, re.MULTILINE)
        if match:
            found[figure.name] = float(match.group(1).replace(",", ""))
    return found


def add_worktree(ref: str, folder: Path) -> Path:
    path = folder / "ref"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), ref],
        check=True,
    )
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def report(ref: Side, head: Side, benches: list[Benchmark]) -> None:
    print(f"\n{'figure':32} {'REF (median)':>14} {'HEAD (median)':>14} {'HEAD/REF':>9}")
    for bench in benches:
        for figure in bench.figures:
            a, b = ref.runs.get(figure.name, []), head.runs.get(figure.name, [])
            if not a or not b:
                print(f"{figure.name:32} {'-':>14} {'-':>14} {'-':>9}")
                continue
            ma, mb = statistics.median(a), statistics.median(b)
            ratio = mb / ma if ma else float("nan")
            better = "higher is better" if figure.higher_is_better else "lower is better"
            shown = f"{ratio:>8.2f}x" if ma else f"{'-':>9}"  # nothing to divide by: REF's figure is 0
            print(f"{figure.name:32} {ma:>14,.1f} {mb:>14,.1f} {shown}  ({better}; {len(a)}+{len(b)} runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ref", help="git ref to compare with (a commit, tag or branch)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test of the comparison)")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    benches = [BENCHMARKS[n] for n in names]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.ref], capture_output=True, text=True, check=False
    )
    if commit.returncode != 0:
        print(f"not a git ref: {args.ref}", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="segcrit-compare-"))
    worktree: Path | None = None
    try:
        worktree = add_worktree(args.ref, folder)
        ref, head = Side("REF", worktree), Side("HEAD", ROOT)
        print(
            f"compare: REF {args.ref} ({commit.stdout.strip()}) vs HEAD (working tree), {args.rounds} round(s), "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
        )
        for round_no in range(args.rounds):
            order = (ref, head) if round_no % 2 == 0 else (head, ref)
            print(f"round {round_no + 1}")
            for bench in benches:
                for side in order:
                    for name, value in run_benchmark(side, bench, args.quick).items():
                        side.runs.setdefault(name, []).append(value)
        report(ref, head, benches)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if worktree is not None:
            remove_worktree(worktree)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
