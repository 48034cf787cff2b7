"""The `segcrit` command line: parse, call, print. A user mistake is one line on stderr."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from segcrit import __version__
from segcrit.config import (
    MAX_SERVE_WORKERS,
    SQLITE_WORKERS_PROBLEM,
    Config,
    audience_names,
    config_warnings,
    load_config,
)
from segcrit.errors import ConfigError, SegcritError, UserError
from segcrit.logs import setup_logging

# Objects allocated (net) before a young-generation collection; see tune_runtime.
GC_THRESHOLD_GEN0 = 20_000
# How long a thread that wants the GIL waits before the one holding it must hand it over (Python's
# default is 5 ms); see tune_runtime.
SWITCH_INTERVAL_SECS = 0.001

config_option = click.option(
    "--config",
    "config_file",
    default=None,
    metavar="FILE",
    help="Config file (default: $SEGCRIT_CONFIG or ./segcrit.yaml).",
)


@click.group()
@click.version_option(__version__, prog_name="segcrit")
def cli() -> None:
    """segcrit: Segment in, Criteo out: audiences, conversions, signals, catalog."""


# ---------------------------------------------------------------------------------------- serve


@cli.command()
@config_option
@click.option(
    "--workers",
    type=int,
    default=None,
    metavar="N",
    help="Processes on this machine sharing the port and the work (PostgreSQL store; default: server.workers).",
)
@click.option(
    "--roles",
    "roles_text",
    default=None,
    metavar="R,...",
    help="Only these roles: ingest, process, deliver, schedule (default: all).",
)
@click.option("--fd", type=int, default=None, hidden=True, help="Serve on this inherited listening socket.")
def serve(config_file: str | None, workers: int | None, roles_text: str | None, fd: int | None) -> None:
    """HTTP ingest, delivery workers and scheduler in one process (or N with --workers)."""
    config = load_config(config_file)
    roles = parse_roles(roles_text)
    count = config.server.workers if workers is None else workers
    if not 1 <= count <= MAX_SERVE_WORKERS:
        raise UserError(f"--workers must be between 1 and {MAX_SERVE_WORKERS}, not {count}")
    if count > 1 and config.store.startswith("sqlite"):
        raise UserError(f"--workers {count}: {SQLITE_WORKERS_PROBLEM}")
    setup_logging()
    # `main` restores SIGPIPE's default for commands whose output is piped (`status | head`); a
    # server must not die of it when a client goes away before its answer is written (a probe that
    # timed out while the answer waited in the listen queue): the write fails with EPIPE instead.
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if count > 1:
        from segcrit.supervisor import Supervisor, child_command, listen

        Supervisor(child_command(config_file, roles), count, listen(config.server.host, config.server.port)).run()
        return
    _serve_one(config, roles, fd)


def parse_roles(text: str | None) -> tuple[str, ...]:
    """`--roles ingest,deliver` as the roles in their usual order; every role when not given."""
    from segcrit.runtime import ROLES

    if text is None:
        return ROLES
    asked = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [role for role in asked if role not in ROLES]
    if unknown or not asked:
        problem = f"unknown role {unknown[0]!r}" if unknown else "no role given"
        raise UserError(f"--roles: {problem} (roles: {', '.join(ROLES)})")
    return tuple(role for role in ROLES if role in asked)


def _serve_one(config: Config, roles: tuple[str, ...], fd: int | None) -> None:
    import socket

    import uvicorn

    from segcrit.app import create_app
    from segcrit.store import open_store

    store = open_store(config.store, owner=True)
    # On SQLite, processing runs in a child process: a core of its own (segcrit.processing.child).
    app = create_app(config, store, roles=roles, processor_child=True)
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(config.server.host, config.server.port)))
    tune_runtime()
    _exit_zero_after_signals()
    # A child of `serve --workers N` serves the socket its supervisor listens on (segcrit.supervisor).
    sockets = [socket.socket(fileno=fd)] if fd is not None else None
    try:
        server.run(sockets=sockets)
    finally:
        store.close()
    if not server.started:
        raise UserError(f"could not listen on {config.server.host}:{config.server.port}")


def tune_runtime() -> None:
    """Interpreter settings for a server that parses thousands of objects per request.

    Each /v1/batch body becomes thousands of dicts and lists, so with the default threshold (700)
    the collector ran many times per request, each time also walking whatever had survived into
    the older generations. Freezing what startup built (modules, config, app) takes it out of
    every collection; a larger first threshold lets a request's objects die before one runs.

    The ingest writer thread hands the GIL over for every SQLite statement and, when the event
    loop's thread is busy parsing requests, waits the switch interval to get it back: with
    Python's 5 ms, a group commit of a few statements spent tens of milliseconds waiting while the
    requests it acknowledges waited too. 1 ms: 10 % more events/s at ingest
    (`benchmarks/ingest.py`, 3 runs each).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_GEN0, 20, 20)
    sys.setswitchinterval(SWITCH_INTERVAL_SECS)


def uvicorn_options(host: str, port: int) -> dict[str, Any]:
    """The uvicorn settings of `segcrit serve` (benchmarks/ingest.py serves its baseline app with them)."""
    return {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        # In-flight requests get 3 s, the workers 6 s (Runtime.stop): out within 10 s of SIGTERM.
        "timeout_graceful_shutdown": 3,
    }


def _after_shutdown(signum: int, frame: object) -> None:
    """Handler left in place for the signal uvicorn re-raises once it has shut down."""


def _exit_zero_after_signals() -> None:
    """uvicorn restores the handlers it found and re-raises the signal after a graceful shutdown;
    finding these no-op handlers, the re-raise is harmless and SIGTERM ends with exit 0 (SPEC §2)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _after_shutdown)


# ---------------------------------------------------------------------------------------- init


@cli.command()
@click.option(
    "--template",
    "template",
    required=True,
    metavar="NAME",
    help="audience-sync, conversions, suppression, lookalike, catalog, lifecycle or all.",
)
@click.option(
    "--output",
    default="segcrit.yaml",
    show_default=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the config.",
)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def init(template: str, output: Path, force: bool) -> None:
    """Write a commented config for a ready-made use case."""
    from segcrit.config_templates import write_template

    needed = write_template(template, output, force=force)
    click.echo(f"wrote {output} ({template} template)")
    if needed:
        click.echo(f"set {', '.join(needed)} in the environment, then run: segcrit check --config {output}")


# ---------------------------------------------------------------------------------------- check


@cli.command()
@config_option
@click.option("--online", is_flag=True, help="Also get a Criteo token and resolve each audience.")
def check(config_file: str | None, online: bool) -> None:
    """Validate the config; list every problem with its key path."""
    config = load_config(config_file)
    for warning in config_warnings(config):
        click.echo(f"warning: {warning}", err=True)
    if online:
        asyncio.run(_check_online(config))
    click.echo("config ok" + (" (Criteo reachable, audiences resolved)" if online else ""))


async def _check_online(config: Config) -> None:
    from segcrit.clock import SystemClock
    from segcrit.criteo.errors import CredentialsError
    from segcrit.metrics import Metrics
    from segcrit.runtime import build_criteo_client

    client, http = build_criteo_client(config, SystemClock(), Metrics())
    problems: list[str] = []
    try:
        await client.token()
        for name in sorted(audience_names(config)):
            configured = config.audiences.get(name)
            if configured is not None and configured.segment_id:
                continue
            found = await client.find_segment(name)
            if found is None and configured is not None and not configured.auto_create:
                problems.append(f"audiences.{name}: no Criteo segment of that name and auto_create is false")
    except CredentialsError as exc:
        problems.append(f"criteo.client_id: {exc}")
    except SegcritError as exc:
        # Not a config mistake: Criteo (or the network to it) failed. One line, exit 1.
        raise UserError(f"could not check against Criteo: {exc}") from None
    finally:
        await http.aclose()
    if problems:
        raise ConfigError(problems)


# ---------------------------------------------------------------------------------------- emulator


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8099, show_default=True, type=int)
@click.option("--faults", default=None, metavar="SPEC", help="e.g. 5xx=0.1,429_burst=3,latency_ms=50,token_ttl=60")
@click.option(
    "--profiles",
    "profiles_file",
    default=None,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON seed of the Segment Profile API it also serves (spaces, tokens, people).",
)
def emulator(host: str, port: int, faults: str | None, profiles_file: Path | None) -> None:
    """A local emulator of the Criteo API (and of Segment's Profile API)."""
    from segcrit.emulator.profiles import ProfileApiState
    from segcrit.emulator.server import serve as serve_emulator

    profiles = ProfileApiState.from_file(profiles_file) if profiles_file is not None else None
    setup_logging()
    _exit_zero_after_signals()
    serve_emulator(host, port, faults, profiles=profiles)


# ---------------------------------------------------------------------------------------- demo


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the temporary folder (database and config).")
def demo(keep: bool) -> None:
    """Emulator + server + sample shop traffic, then what Criteo received."""
    from segcrit.demo import run_demo

    run_demo(keep=keep)


# ---------------------------------------------------------------------------------------- status


@cli.command()
@config_option
def status(config_file: str | None) -> None:
    """Backlog, delivery lag, audiences (desired vs acknowledged), dead letters, set-aside events."""
    from segcrit.status import collect_status, render_status
    from segcrit.store import open_store

    config = load_config(config_file)
    store = open_store(config.store)
    try:
        render_status(collect_status(store, config))
    finally:
        store.close()


@cli.command()
@config_option
@click.option("--audience", default=None, help="Only this audience's dead letters.")
@click.option("--failed", is_flag=True, help="Put the events processing set aside back on the inbox instead.")
def replay(config_file: str | None, audience: str | None, failed: bool) -> None:
    """Put dead letters back on the delivery queue (--failed: set-aside events on the inbox)."""
    import time

    from segcrit.store import open_store

    if failed and audience is not None:
        raise UserError("--failed puts back set-aside events, which belong to no audience: drop --audience")
    config = load_config(config_file)
    # No ownership: a quick edit of the store, made while `segcrit serve` runs (SQLite's lock orders it).
    store = open_store(config.store)
    try:
        count = store.replay_failed_events() if failed else store.replay_dead_letters(audience, time.time())
    finally:
        store.close()
    if failed:
        click.echo(f"{count} set-aside event(s) put back on the inbox")
    else:
        click.echo(f"{count} dead letter(s) put back on the delivery queue")


@cli.command()
@click.argument("identifier")
@config_option
def forget(identifier: str, config_file: str | None) -> None:
    """Erase one person (userId, anonymousId or email) and remove them from every audience."""
    from segcrit.clock import SystemClock
    from segcrit.metrics import Metrics
    from segcrit.processing.engine import Processor
    from segcrit.store import open_store

    config = load_config(config_file)
    store = open_store(config.store)
    try:
        erased = Processor(store, config, SystemClock(), Metrics()).forget(identifier)
    finally:
        store.close()
    if erased == 0:
        click.echo("no profile matched; a tombstone was recorded so older events will not bring them back")
    else:
        click.echo(f"erased {erased} profile(s); their removal from Criteo is queued")


@cli.command()
@click.argument("identifier")
@config_option
def enrich(identifier: str, config_file: str | None) -> None:
    """Run every lookup for one person (userId, anonymousId or email); print what each returned."""
    from segcrit.enrichment.inspect import report_lines, run_inspection
    from segcrit.store import open_store, store_exists

    config = load_config(config_file)
    if not config.enrichment:
        raise UserError("no lookups to run: the config has no `enrichment:` section")
    # The person's stored ids help choose the keys; a store that does not exist yet is not created.
    store = open_store(config.store) if store_exists(config.store) else None
    try:
        reports = run_inspection(config, store, identifier)
    finally:
        if store is not None:
            store.close()
    for line in report_lines(reports):
        click.echo(line)
    failed = [report.name for report in reports if report.error is not None]
    if failed:
        raise SegcritError(f"lookup(s) failed: {', '.join(failed)}")


@cli.command()
@click.argument("event_file", type=click.Path(dir_okay=False, path_type=Path))
@config_option
def preview(event_file: Path, config_file: str | None) -> None:
    """Dry run: which flows match, how the profile changes, which Criteo requests would follow."""
    from segcrit.preview import preview_event

    config = load_config(config_file)
    try:
        text = event_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {event_file}: {exc.strerror}") from None
    click.echo(preview_event(config, text))


@cli.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@config_option
@click.option("--source", default="import", show_default=True, help="Source name for dedupe by messageId.")
def import_command(files: tuple[Path, ...], config_file: str | None, source: str) -> None:
    """Backfill from Segment archive files (newline-delimited JSON, .gz accepted)."""
    from segcrit.backfill import import_files
    from segcrit.store import open_store

    config = load_config(config_file)
    store = open_store(config.store, owner=True)
    try:
        report = import_files(config, store, list(files), source, progress=sys.stderr.isatty())
    finally:
        store.close()
    click.echo(
        f"{report.lines} line(s): {report.stored} queued, {report.duplicates} duplicate(s), "
        f"{report.rejected} rejected; `segcrit serve` processes what was queued"
    )
    for reason, count in sorted(report.reasons.items(), key=lambda item: -item[1]):
        click.echo(f"  rejected {count}: {reason}")


@cli.command()
@click.argument("audience")
@config_option
def resync(audience: str, config_file: str | None) -> None:
    """Full reconciliation of one audience against Criteo."""
    from segcrit.backfill import resync_audience
    from segcrit.store import open_store

    config = load_config(config_file)
    store = open_store(config.store, owner=True)
    try:
        sent = asyncio.run(resync_audience(config, store, audience, progress=sys.stderr.isatty()))
    finally:
        store.close()
    click.echo(f"{audience}: Criteo emptied and refilled with {sent} identifier(s)")


@cli.command()
@config_option
@click.option("--check", is_flag=True, help="Only list the pending migrations (exit 1 when there are some).")
def migrate(config_file: str | None, check: bool) -> None:
    """Apply the store's pending schema migrations (serve also applies them at start)."""
    from segcrit.store import open_store, pending_migrations

    config = load_config(config_file)
    if check:
        waiting = pending_migrations(config.store)
        for migration in waiting:
            click.echo(f"pending: {migration.label}")
        if waiting:
            raise SegcritError(f"{len(waiting)} migration(s) pending: run `segcrit migrate`")
        click.echo("schema up to date")
        return
    # As an owner: on SQLite no `segcrit serve` runs on the file meanwhile (it migrates at start).
    store = open_store(config.store, owner=True, migrate=False)
    try:
        applied = store.apply_migrations()
    finally:
        store.close()
    for migration in applied:
        click.echo(f"applied: {migration.label}")
    click.echo("schema up to date" + (f" ({len(applied)} migration(s) applied)" if applied else ""))


# ---------------------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    try:
        cli.main(args=argv, prog_name="segcrit", standalone_mode=False)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"config error: {problem}", err=True)
        sys.exit(2)
    except SegcritError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


logging.getLogger("segcrit").addHandler(logging.NullHandler())
