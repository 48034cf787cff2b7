"""Running the emulator: `serve()` in the foreground (the CLI), `running_emulator()` in a thread (tests).

`running_emulator` binds a free loopback port itself, so the URL is known before uvicorn starts, and
waits on an event set when uvicorn has finished starting: no fixed sleep, a deadline instead.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from segcrit.emulator.app import create_emulator_app
from segcrit.emulator.profiles import ProfileApiState
from segcrit.emulator.state import EmulatorState

START_TIMEOUT_SECS = 10.0
STOP_TIMEOUT_SECS = 10.0


def serve(
    host: str = "127.0.0.1",
    port: int = 8099,
    faults: str | None = None,
    *,
    state: EmulatorState | None = None,
    profiles: ProfileApiState | None = None,
    log_level: str = "info",
) -> None:
    """Serve the emulator until SIGINT/SIGTERM. A bad `faults` spec raises FaultSpecError (a UserError)."""
    if state is None:
        state = EmulatorState(faults=faults)
    elif faults is not None:
        state.set_faults(faults)
    app = create_emulator_app(state, profiles)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off")
    uvicorn.Server(config).run()


class _ThreadedServer(uvicorn.Server):
    """A uvicorn server that tells another thread when it is up (or has failed to come up)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


@contextmanager
def running_emulator(
    state: EmulatorState | None = None,
    *,
    profiles: ProfileApiState | None = None,
    host: str = "127.0.0.1",
    stop_timeout_secs: float = STOP_TIMEOUT_SECS,
) -> Iterator[str]:
    """Serve `state` on a free port of `host` in a background thread; yields the base URL.

    On exit the server stops taking connections; `stop_timeout_secs=0` returns at once and lets it
    finish in the background (tests do this: the next one gets a new port, strays get refused).
    """
    app = create_emulator_app(state if state is not None else EmulatorState(), profiles)
    with running_app(app, host=host, stop_timeout_secs=stop_timeout_secs) as url:
        yield url


@contextmanager
def running_app(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    stop_timeout_secs: float = STOP_TIMEOUT_SECS,
    lifespan: Literal["on", "off"] = "off",
) -> Iterator[str]:
    """Serve any ASGI app on a free port of `host` in a background thread; yields the base URL.

    `lifespan="on"` runs the app's startup and shutdown (segcrit's server starts its workers there).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    port = listener.getsockname()[1]
    server = _ThreadedServer(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name=f"asgi-server:{port}", daemon=True
    )
    thread.start()
    try:
        if not server.ready.wait(START_TIMEOUT_SECS) or not server.started:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(stop_timeout_secs)
        if not server.started:
            listener.close()  # uvicorn closes the socket itself once it has started
