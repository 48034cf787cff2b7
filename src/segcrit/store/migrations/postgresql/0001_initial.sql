-- segcrit's PostgreSQL schema, version 1 (segcrit.store.migrations): the tables of the SQLite
-- schema (see migrations/sqlite/0001_initial.sql for what each holds), plus what several processes
-- sharing one database need (docs/architecture.md, "Several processes on PostgreSQL"):
--   - claims on delivery work carry their holder (`claim_holder`, a store instance) next to their
--     deadline (`claim_until`); a holder is alive while it renews its row of `claim_holders`;
--   - running totals are written as deltas (insert-only, so concurrent transactions never wait on
--     one hot row) and folded into their totals from time to time;
--   - the Criteo call budget of every process is one table of per-second call counts.
-- Timestamps are float seconds since the epoch, as on SQLite.

CREATE TABLE IF NOT EXISTS meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Accepted events not yet processed; the backlog is the `inbox` counter (triggers below).
CREATE TABLE IF NOT EXISTS inbox (
    seq         bigserial PRIMARY KEY,
    source      text NOT NULL,
    received_at double precision NOT NULL,
    body        bytea NOT NULL
);
-- A queue table: rows are inserted and deleted all the time, so vacuum it often.
ALTER TABLE inbox SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 20000);

CREATE TABLE IF NOT EXISTS seen (
    source     text NOT NULL,
    message_id text NOT NULL,
    seen_at    double precision NOT NULL,
    PRIMARY KEY (source, message_id)
);
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (seen_at);

CREATE TABLE IF NOT EXISTS profiles (
    id           bigserial PRIMARY KEY,
    created_at   double precision NOT NULL,
    last_seen_at double precision NOT NULL,
    consent      smallint,
    consent_ts   double precision,
    traits       text,             -- JSON
    traits_ts    double precision
);
CREATE INDEX IF NOT EXISTS profiles_by_last_seen ON profiles (last_seen_at, id);
-- A unit of work reserves ids 1000 at a time (one nextval; segcrit.store.postgres_tx.ID_BLOCK).
ALTER SEQUENCE profiles_id_seq INCREMENT BY 1000;

CREATE TABLE IF NOT EXISTS identifiers (
    kind       text NOT NULL,
    value      text NOT NULL,
    profile_id bigint NOT NULL,
    extra      text,
    active     smallint NOT NULL DEFAULT 1,
    active_ts  double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, value)
);
CREATE INDEX IF NOT EXISTS identifiers_by_profile ON identifiers (profile_id);

CREATE TABLE IF NOT EXISTS tombstones (
    kind       text NOT NULL,
    value      text NOT NULL,
    deleted_at double precision NOT NULL,
    PRIMARY KEY (kind, value)
);

CREATE TABLE IF NOT EXISTS erasures (
    kind       text NOT NULL,
    value      text NOT NULL,
    deleted_at double precision NOT NULL,
    PRIMARY KEY (kind, value)
);

CREATE TABLE IF NOT EXISTS memberships (
    profile_id bigint NOT NULL,
    audience   text NOT NULL,
    member     smallint NOT NULL,
    ts         double precision NOT NULL,
    PRIMARY KEY (profile_id, audience)
);
CREATE INDEX IF NOT EXISTS memberships_by_audience ON memberships (audience, member);

CREATE TABLE IF NOT EXISTS suppressions (
    profile_id bigint NOT NULL,
    flow       text NOT NULL,
    since      double precision NOT NULL,
    until      double precision NOT NULL,
    PRIMARY KEY (profile_id, flow)
);
CREATE INDEX IF NOT EXISTS suppressions_by_until ON suppressions (until);

CREATE TABLE IF NOT EXISTS lookalikes (
    name          text PRIMARY KEY,
    seed_audience text NOT NULL,
    target_size   integer NOT NULL,
    segment_id    text,
    created_at    double precision
);

CREATE TABLE IF NOT EXISTS jobs (
    name        text PRIMARY KEY,
    last_run_at double precision,
    last_result text,
    next_run_at double precision NOT NULL
);

-- As on SQLite; `claim_holder` is the store instance whose call carries the row until
-- `claim_until` (while that holder is alive: `claim_holders`).
CREATE TABLE IF NOT EXISTS targets (
    audience       text NOT NULL,
    id_type        text NOT NULL,
    id_value       text NOT NULL,
    profile_id     bigint,
    desired        smallint NOT NULL,
    acked          smallint NOT NULL DEFAULT 0,
    since          double precision NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    next_at        double precision NOT NULL DEFAULT 0,
    first_failure  double precision,
    dead_letter_id bigint,
    claim_until    double precision,
    acked_before   smallint,
    claim_holder   text,
    PRIMARY KEY (audience, id_type, id_value)
);
CREATE INDEX IF NOT EXISTS targets_by_profile ON targets (profile_id);
CREATE INDEX IF NOT EXISTS targets_pending ON targets (since)
    WHERE desired != acked AND dead_letter_id IS NULL;
CREATE INDEX IF NOT EXISTS targets_pending_group ON targets (audience, id_type, desired, since)
    WHERE desired != acked AND dead_letter_id IS NULL;
CREATE INDEX IF NOT EXISTS targets_dead ON targets (dead_letter_id) WHERE dead_letter_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS audiences (
    name          text PRIMARY KEY,
    segment_id    text,
    auto_create   smallint NOT NULL DEFAULT 1,
    created_by_us smallint NOT NULL DEFAULT 0,
    first_seen_at double precision,
    admitted_day  integer,
    held_since    double precision
);
CREATE INDEX IF NOT EXISTS audiences_by_admitted_day ON audiences (admitted_day) WHERE admitted_day IS NOT NULL;
CREATE INDEX IF NOT EXISTS audiences_held ON audiences (held_since) WHERE held_since IS NOT NULL;

CREATE TABLE IF NOT EXISTS dead_letters (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL DEFAULT 'contact_list',
    created_at  double precision NOT NULL,
    audience    text NOT NULL,
    operation   text NOT NULL,
    id_type     text NOT NULL,
    count       integer NOT NULL,
    status      integer,
    error       text NOT NULL,
    replayed_at double precision
);
CREATE INDEX IF NOT EXISTS dead_letters_open ON dead_letters (audience) WHERE replayed_at IS NULL;

CREATE TABLE IF NOT EXISTS orders (
    order_id   text PRIMARY KEY,
    profile_id bigint,
    ts         double precision NOT NULL,
    revenue    double precision,
    currency   text,
    sent_at    double precision
);
CREATE INDEX IF NOT EXISTS orders_by_profile ON orders (profile_id);

CREATE TABLE IF NOT EXISTS criteo_events (
    id             bigserial PRIMARY KEY,
    person         text NOT NULL,
    profile_id     bigint,
    header         bytea NOT NULL,
    body           bytea NOT NULL,
    created_at     double precision NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    next_at        double precision NOT NULL DEFAULT 0,
    first_failure  double precision,
    dead_letter_id bigint,
    claim_until    double precision,
    claim_holder   text
);
CREATE INDEX IF NOT EXISTS criteo_events_pending ON criteo_events (created_at, id) WHERE dead_letter_id IS NULL;
CREATE INDEX IF NOT EXISTS criteo_events_by_profile ON criteo_events (profile_id);
CREATE INDEX IF NOT EXISTS criteo_events_by_person ON criteo_events (person) WHERE dead_letter_id IS NULL;
CREATE INDEX IF NOT EXISTS criteo_events_dead ON criteo_events (dead_letter_id) WHERE dead_letter_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS products (
    merchant_id      text NOT NULL,
    product_id       text NOT NULL,
    fields           bytea NOT NULL,
    fingerprint      text NOT NULL,
    sent_fingerprint text,
    missing          text,
    updated_at       double precision NOT NULL,
    batch_token      text,
    next_at          double precision NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,
    first_failure    double precision,
    dead_letter_id   bigint,
    status           text,
    errors           text,
    claim_until      double precision,
    claim_holder     text,
    PRIMARY KEY (merchant_id, product_id)
);
CREATE INDEX IF NOT EXISTS products_pending ON products (merchant_id, updated_at)
    WHERE missing IS NULL AND batch_token IS NULL AND dead_letter_id IS NULL
    AND (sent_fingerprint IS NULL OR sent_fingerprint != fingerprint);
CREATE INDEX IF NOT EXISTS products_dead ON products (dead_letter_id) WHERE dead_letter_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS catalog_batches (
    token        text PRIMARY KEY,
    merchant_id  text NOT NULL,
    created_at   double precision NOT NULL,
    products     bytea NOT NULL,
    next_poll    double precision NOT NULL,
    polls        integer NOT NULL DEFAULT 0,
    claim_until  double precision,
    claim_holder text
);

CREATE TABLE IF NOT EXISTS failed_events (
    seq         bigint PRIMARY KEY,
    source      text NOT NULL,
    received_at double precision NOT NULL,
    body        bytea NOT NULL,
    error       text NOT NULL,
    failed_at   double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS failed_events_by_time ON failed_events (failed_at);

-- Named leases (scheduled jobs): `expires_at` is on the database's clock (segcrit.store.postgres).
CREATE TABLE IF NOT EXISTS leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at double precision NOT NULL
);

-- The store instances that hold claims: one row each, renewed every few seconds while the process
-- lives (`alive_until`, on the database's clock). A claim whose holder stopped renewing is free.
CREATE TABLE IF NOT EXISTS claim_holders (
    id          text PRIMARY KEY,
    alive_until double precision NOT NULL,
    started_at  double precision NOT NULL,
    host        text NOT NULL
);

-- ------------------------------------------------------------------------------------------------
-- Running totals. A total is its row in `counters` (or `audience_counts`) plus the rows of its
-- deltas table not yet folded in: writers only insert deltas (triggers below, in the transaction
-- of the write they count), a fold (segcrit.store.postgres, every second) moves them into the
-- totals. Names in `counters`: `inbox` (the backlog), `dead_letters` (not replayed),
-- `audiences_held`, `audience_messages_ignored:SOURCE`.

CREATE TABLE IF NOT EXISTS counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS counter_deltas (
    id    bigserial PRIMARY KEY,
    name  text NOT NULL,
    delta bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS counter_deltas_by_name ON counter_deltas (name);

-- Per audience, as on SQLite (see there for what each column counts).
CREATE TABLE IF NOT EXISTS audience_counts (
    audience       text PRIMARY KEY,
    desired        bigint NOT NULL DEFAULT 0,
    acknowledged   bigint NOT NULL DEFAULT 0,
    pending_add    bigint NOT NULL DEFAULT 0,
    pending_remove bigint NOT NULL DEFAULT 0,
    dead           bigint NOT NULL DEFAULT 0,
    last_sync_at   double precision
);
CREATE TABLE IF NOT EXISTS audience_count_deltas (
    id             bigserial PRIMARY KEY,
    audience       text NOT NULL,
    desired        bigint NOT NULL,
    acknowledged   bigint NOT NULL,
    pending_add    bigint NOT NULL,
    pending_remove bigint NOT NULL,
    dead           bigint NOT NULL,
    last_sync_at   double precision
);
CREATE INDEX IF NOT EXISTS audience_count_deltas_by_audience ON audience_count_deltas (audience);

CREATE OR REPLACE FUNCTION segcrit_inbox_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO counter_deltas (name, delta) SELECT 'inbox', count(*) FROM new_rows HAVING count(*) > 0;
    ELSE
        INSERT INTO counter_deltas (name, delta) SELECT 'inbox', -count(*) FROM old_rows HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER inbox_count_insert AFTER INSERT ON inbox
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION segcrit_inbox_count();
CREATE OR REPLACE TRIGGER inbox_count_delete AFTER DELETE ON inbox
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION segcrit_inbox_count();

-- audience_counts: what one row of `targets` adds to its audience's counts.
CREATE OR REPLACE FUNCTION segcrit_target_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audience_count_deltas (audience, desired, acknowledged, pending_add, pending_remove, dead, last_sync_at)
        SELECT audience, sum(desired), count(*) FILTER (WHERE acked = 1),
               count(*) FILTER (WHERE desired = 1 AND acked != 1 AND dead_letter_id IS NULL),
               count(*) FILTER (WHERE desired = 0 AND acked != 0 AND dead_letter_id IS NULL),
               count(*) FILTER (WHERE dead_letter_id IS NOT NULL),
               CASE WHEN bool_or(acked = 1) THEN extract(epoch FROM clock_timestamp()) END
        FROM new_rows GROUP BY audience;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO audience_count_deltas (audience, desired, acknowledged, pending_add, pending_remove, dead)
        SELECT audience, -sum(desired), -count(*) FILTER (WHERE acked = 1),
               -count(*) FILTER (WHERE desired = 1 AND acked != 1 AND dead_letter_id IS NULL),
               -count(*) FILTER (WHERE desired = 0 AND acked != 0 AND dead_letter_id IS NULL),
               -count(*) FILTER (WHERE dead_letter_id IS NOT NULL)
        FROM old_rows GROUP BY audience;
    ELSE
        -- Only rows whose counted columns changed (retries, claims' deadlines and merges count nothing).
        INSERT INTO audience_count_deltas (audience, desired, acknowledged, pending_add, pending_remove, dead, last_sync_at)
        SELECT n.audience,
               sum(n.desired - o.desired),
               sum((n.acked = 1)::int - (o.acked = 1)::int),
               sum((n.desired = 1 AND n.acked != 1 AND n.dead_letter_id IS NULL)::int
                   - (o.desired = 1 AND o.acked != 1 AND o.dead_letter_id IS NULL)::int),
               sum((n.desired = 0 AND n.acked != 0 AND n.dead_letter_id IS NULL)::int
                   - (o.desired = 0 AND o.acked != 0 AND o.dead_letter_id IS NULL)::int),
               sum((n.dead_letter_id IS NOT NULL)::int - (o.dead_letter_id IS NOT NULL)::int),
               CASE WHEN bool_or(n.acked != o.acked AND n.acked != 2) THEN extract(epoch FROM clock_timestamp()) END
        FROM new_rows n JOIN old_rows o USING (audience, id_type, id_value)
        WHERE n.desired != o.desired OR n.acked != o.acked
            OR (n.dead_letter_id IS NULL) != (o.dead_letter_id IS NULL)
        GROUP BY n.audience;
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER targets_count_insert AFTER INSERT ON targets
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION segcrit_target_counts();
CREATE OR REPLACE TRIGGER targets_count_update AFTER UPDATE ON targets
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION segcrit_target_counts();
CREATE OR REPLACE TRIGGER targets_count_delete AFTER DELETE ON targets
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION segcrit_target_counts();

-- `dead_letters` (open ones) and `audiences_held`: rare writes, counted row by row.
CREATE OR REPLACE FUNCTION segcrit_row_counts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta integer := 0;
BEGIN
    IF TG_TABLE_NAME = 'dead_letters' THEN
        delta := (CASE WHEN TG_OP != 'DELETE' AND NEW.replayed_at IS NULL THEN 1 ELSE 0 END)
               - (CASE WHEN TG_OP != 'INSERT' AND OLD.replayed_at IS NULL THEN 1 ELSE 0 END);
    ELSE
        delta := (CASE WHEN TG_OP != 'DELETE' AND NEW.held_since IS NOT NULL THEN 1 ELSE 0 END)
               - (CASE WHEN TG_OP != 'INSERT' AND OLD.held_since IS NOT NULL THEN 1 ELSE 0 END);
    END IF;
    IF delta != 0 THEN
        INSERT INTO counter_deltas (name, delta)
        VALUES (CASE WHEN TG_TABLE_NAME = 'dead_letters' THEN 'dead_letters' ELSE 'audiences_held' END, delta);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER dead_letters_open_count AFTER INSERT OR DELETE OR UPDATE OF replayed_at ON dead_letters
    FOR EACH ROW EXECUTE FUNCTION segcrit_row_counts();
CREATE OR REPLACE TRIGGER audiences_held_count AFTER INSERT OR DELETE OR UPDATE OF held_since ON audiences
    FOR EACH ROW EXECUTE FUNCTION segcrit_row_counts();

-- ------------------------------------------------------------------------------------------------
-- The Criteo call budgets every process shares (segcrit.store.postgres_ratelimit): the calls made
-- per second of the database's clock, and the hold Criteo asked for (`x-ratelimit-reset`).

CREATE TABLE IF NOT EXISTS rate_budgets (
    name       text PRIMARY KEY,
    hold_until double precision NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rate_calls (
    budget text NOT NULL,
    second bigint NOT NULL,
    calls  integer NOT NULL,
    PRIMARY KEY (budget, second)
);

-- Take one call of budget `p_budget` at `p_now` (seconds, on the database's clock), at most
-- `p_limit` in any `p_span` seconds: returns 0 when taken, else how many seconds to wait before
-- asking again. The calls are counted per whole second; a call is taken only when fewer than
-- `p_limit` calls fall in the seconds that overlap (p_now - p_span, p_now], so that no window of
-- `p_span` seconds, wherever it starts, ever holds more than `p_limit` calls.
CREATE OR REPLACE FUNCTION segcrit_take_call(p_budget text, p_now double precision, p_limit integer,
                                             p_span double precision) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    v_hold double precision;
    v_first bigint := floor(p_now - p_span)::bigint;
    v_used bigint;
    v_bucket record;
BEGIN
    INSERT INTO rate_budgets (name) VALUES (p_budget) ON CONFLICT (name) DO NOTHING;
    -- One taker at a time per budget, in every process.
    SELECT hold_until INTO v_hold FROM rate_budgets WHERE name = p_budget FOR UPDATE;
    IF v_hold > p_now THEN
        RETURN v_hold - p_now;
    END IF;
    -- Seconds long gone (a minute more than the window: a caller whose clock read is a little
    -- older than another's still counts every call of its window).
    DELETE FROM rate_calls WHERE budget = p_budget AND second < v_first - 60;
    SELECT coalesce(sum(calls), 0) INTO v_used FROM rate_calls WHERE budget = p_budget AND second >= v_first;
    IF v_used < p_limit THEN
        INSERT INTO rate_calls (budget, second, calls) VALUES (p_budget, floor(p_now)::bigint, 1)
        ON CONFLICT (budget, second) DO UPDATE SET calls = rate_calls.calls + 1;
        RETURN 0;
    END IF;
    -- Full: free once enough of the oldest seconds have left the window.
    FOR v_bucket IN SELECT second, calls FROM rate_calls
                    WHERE budget = p_budget AND second >= v_first ORDER BY second LOOP
        v_used := v_used - v_bucket.calls;
        IF v_used < p_limit THEN
            RETURN greatest(v_bucket.second + 1 + p_span - p_now, 0.001);
        END IF;
    END LOOP;
    RETURN p_span;
END $$;

-- ------------------------------------------------------------------------------------------------
-- Enrichment, as on SQLite.

CREATE TABLE IF NOT EXISTS lookups (
    lookup       text NOT NULL,
    profile_id   bigint NOT NULL,
    due_at       double precision NOT NULL,
    version      integer NOT NULL DEFAULT 0,
    looked_up_at double precision,
    outcome      text,
    answer       text,
    PRIMARY KEY (lookup, profile_id)
);
CREATE INDEX IF NOT EXISTS lookups_due ON lookups (lookup, due_at);
CREATE INDEX IF NOT EXISTS lookups_by_profile ON lookups (profile_id);

CREATE TABLE IF NOT EXISTS lookup_sources (
    lookup          text PRIMARY KEY,
    failing_since   double precision,
    last_error      text,
    next_try_at     double precision,
    last_success_at double precision,
    lookups         bigint NOT NULL DEFAULT 0,
    requests        bigint NOT NULL DEFAULT 0,
    seeded_key      text
);

-- ------------------------------------------------------------------------------------------------
-- The admin UI's part, as on SQLite.

CREATE TABLE IF NOT EXISTS admin_counters (
    minute bigint NOT NULL,
    series text NOT NULL,
    labels text NOT NULL,
    value  double precision NOT NULL,
    PRIMARY KEY (minute, series, labels)
);

CREATE TABLE IF NOT EXISTS admin_calls (
    id          bigserial PRIMARY KEY,
    at          double precision NOT NULL,
    endpoint    text NOT NULL,
    method      text NOT NULL,
    path        text NOT NULL,
    status      integer NOT NULL,
    duration_ms double precision NOT NULL,
    segment_id  text,
    audience    text,
    summary     text NOT NULL,
    answer      text
);
CREATE INDEX IF NOT EXISTS admin_calls_by_endpoint ON admin_calls (endpoint, id);
CREATE INDEX IF NOT EXISTS admin_calls_by_audience ON admin_calls (audience, id) WHERE audience IS NOT NULL;

CREATE TABLE IF NOT EXISTS admin_samples (
    id           bigserial PRIMARY KEY,
    at           double precision NOT NULL,
    source       text NOT NULL,
    accepted     smallint NOT NULL,
    reason       text,
    type         text,
    event        text,
    user_id      text,
    anonymous_id text,
    email        text,
    body         bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS admin_samples_by_source ON admin_samples (source, accepted, id);
CREATE INDEX IF NOT EXISTS admin_samples_by_user ON admin_samples (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS admin_samples_by_anonymous ON admin_samples (anonymous_id) WHERE anonymous_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS admin_samples_by_email ON admin_samples (email) WHERE email IS NOT NULL;

-- Forgetting a person tombstones their identifiers: their samples go too.
CREATE OR REPLACE FUNCTION segcrit_forget_samples() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM admin_samples WHERE (NEW.kind = 'user_id' AND user_id = NEW.value)
        OR (NEW.kind = 'anonymous_id' AND anonymous_id = NEW.value) OR (NEW.kind = 'email' AND email = NEW.value);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER tombstones_forget_samples AFTER INSERT OR UPDATE ON tombstones
    FOR EACH ROW EXECUTE FUNCTION segcrit_forget_samples();

CREATE TABLE IF NOT EXISTS admin_resyncs (
    audience     text PRIMARY KEY,
    requested_at double precision NOT NULL,
    started_at   double precision,
    finished_at  double precision,
    result       text
);
