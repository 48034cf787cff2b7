"""segcrit.emulator: a local stand-in for the parts of Criteo's API that segcrit calls.

    state = EmulatorState(clock=FakeClock(), faults="5xx=0.1,seed=7")
    with running_emulator(state) as base_url:   # uvicorn on a free loopback port, in a thread
        ...                                     # point the client at base_url
        state.members("cart_abandoners")        # what Criteo now holds

        state.event_documents()                 # Events API documents accepted
        state.catalog("6789")                   # a merchant's products by id

Modules: `state` (what it remembers), `gateway` (auth, rate limit, faults, call log), `oauth`,
`audience_segments`, `events` (the Events API) and `catalog` (the Product Importer API) (the
endpoints), `schemas` (its own models of Criteo's schemas, never the client's), `faults`,
`ratelimit`, `identifiers`, `problems`, `app`, `server` (`serve()` for `segcrit emulator`,
`running_emulator()` for tests).
"""

from segcrit.emulator.app import create_emulator_app
from segcrit.emulator.faults import Faults, FaultSpecError, parse_faults
from segcrit.emulator.server import running_emulator, serve
from segcrit.emulator.state import (
    DEMO_ADVERTISER_ID,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    CallRecord,
    CatalogBatch,
    ClientApp,
    EmulatorState,
    Endpoint,
    Segment,
)

__all__ = [
    "DEMO_ADVERTISER_ID",
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "CallRecord",
    "CatalogBatch",
    "ClientApp",
    "EmulatorState",
    "Endpoint",
    "FaultSpecError",
    "Faults",
    "Segment",
    "create_emulator_app",
    "parse_faults",
    "running_emulator",
    "serve",
]
