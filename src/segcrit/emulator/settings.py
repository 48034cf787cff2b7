"""The parts of a segcrit config that point it at the emulator, shared by `segcrit demo`, the
end-to-end tests and the benchmarks: the emulator's demo credentials and the two Segment sources.

    CONFIG = "store: ...\\n{sources}{criteo}identity: ..."
    CONFIG.format(sources=sources_section(KEY, SECRET), criteo=criteo_section(api_url, caller_id="demo"))
"""

from __future__ import annotations

from segcrit.emulator.state import DEMO_ADVERTISER_ID, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

DEMO_PARTNER_ID = "6789"  # the Events API `account` the demo and the tests use


def sources_section(write_key: str, secret: str | None = None) -> str:
    """`sources:` with a Tracking API source `web` and, given a shared secret, a webhook source `engage`."""
    text = f"sources:\n  - {{name: web, type: tracking_api, write_key: {write_key}}}\n"
    if secret is not None:
        text += f"  - {{name: engage, type: webhook, shared_secret: {secret}}}\n"
    return text


def criteo_section(api_url: str, *, caller_id: str | None = None, extra: str = "") -> str:
    """`criteo:` for the emulator at `api_url`; with `caller_id`, the Events API on it too. `extra`:
    more lines of the section, indented by two spaces."""
    text = (
        f"criteo:\n  client_id: {DEMO_CLIENT_ID}\n  client_secret: {DEMO_CLIENT_SECRET}\n"
        f'  advertiser_id: "{DEMO_ADVERTISER_ID}"\n  api_url: {api_url}\n'
    )
    if caller_id is not None:
        text += (
            f'  partner_id: "{DEMO_PARTNER_ID}"\n  caller_id: {caller_id}\n'
            f"  events_url: {api_url}/m/event?version=s2s_v0\n"
        )
    return text + extra
