"""A process that claims work on a PostgreSQL store and then waits to be killed (test_concurrency.py).

    python -m tests.contract.pg_claimer URL WHAT

WHAT: `chunk` (an inbox chunk of 3 events, its transaction left open), `changes` (every due
contact-list change), `events` (every due Events API event), `products` (merchant m1's due
products), `polls` (every due catalog batch poll). It prints one JSON line with what it claimed,
then sleeps until killed; its holder lease is 2 s, so its claims are free soon after a kill -9.
"""

from __future__ import annotations

import sys
import time

import orjson

from segcrit.store.postgres import PostgresStore

HOLDER_LEASE_SECS = 2.0
FOREVER = 3600.0


def report(claimed: object) -> None:
    sys.stdout.write(orjson.dumps(claimed).decode() + "\n")
    sys.stdout.flush()


def main(url: str, what: str) -> None:
    store = PostgresStore(url, owner=True, holder_lease_secs=HOLDER_LEASE_SECS)
    now = time.time()
    until = now + FOREVER  # a deadline that never comes: only the holder's death frees the claims
    if what == "chunk":
        with store.claim_chunk(3) as chunk:
            report([event.seq for event in chunk.events])
            time.sleep(FOREVER)
    elif what == "changes":
        keys = [change.key for change in store.due_changes(now, 1000)]
        report([[k.audience, k.id_type, k.id_value] for k in store.claim_changes(keys, True, now, until)])
    elif what == "events":
        report(store.claim_criteo_events([e.id for e in store.due_events(now, 1000)], now, until))
    elif what == "products":
        ids = [p.product_id for p in store.due_products("m1", now, 1000)]
        report(store.claim_products("m1", ids, now, until))
    elif what == "polls":
        report([batch.token for batch in store.batches_to_poll(now, until)])
    time.sleep(FOREVER)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
