-- segcrit's SQLite schema, version 1 (segcrit.store.migrations). Timestamps are float seconds
-- since the epoch. Unlike the migrations after it, every statement here is idempotent: a database
-- made before versioned migrations existed (by the same statements, run at every start) is
-- adopted as version 1 without a change.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Accepted events not yet processed. AUTOINCREMENT keeps seq monotonic across deletes, so
-- the backlog is max(seq) - min(seq) + 1, read from the primary key without a scan.
CREATE TABLE IF NOT EXISTS inbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT NOT NULL,
    received_at REAL NOT NULL,
    body        BLOB NOT NULL
);

-- (source, messageId) seen within ingest.dedupe_hours.
CREATE TABLE IF NOT EXISTS seen (
    source     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    seen_at    REAL NOT NULL,
    PRIMARY KEY (source, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (seen_at);

CREATE TABLE IF NOT EXISTS profiles (
    id           INTEGER PRIMARY KEY,
    created_at   REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    consent      INTEGER,          -- NULL: never seen consent information
    consent_ts   REAL,
    traits       BLOB,             -- the traits cohorts use, from identify (JSON), latest first
    traits_ts    REAL
);
CREATE INDEX IF NOT EXISTS profiles_by_last_seen ON profiles (last_seen_at);

-- kind: user_id, anonymous_id, email, phone, madid, gum, identity_link.
-- email/phone values are sha256 hex of the normalised value; extra holds the md5 hex.
CREATE TABLE IF NOT EXISTS identifiers (
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    profile_id INTEGER NOT NULL,
    extra      TEXT,
    active     INTEGER NOT NULL DEFAULT 1,
    active_ts  REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identifiers_by_profile ON identifiers (profile_id);

-- Deleted people: events older than deleted_at carrying these identifiers are dropped.
CREATE TABLE IF NOT EXISTS tombstones (
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    deleted_at REAL NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;

-- Deletions whose events still waiting (inbox, set aside) are to be erased: written with the
-- tombstone, drained by housekeeping or at once by `segcrit forget`.
CREATE TABLE IF NOT EXISTS erasures (
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    deleted_at REAL NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;

-- Desired membership of one profile in one audience, as the flows decided; latest ts wins.
CREATE TABLE IF NOT EXISTS memberships (
    profile_id INTEGER NOT NULL,
    audience   TEXT NOT NULL,
    member     INTEGER NOT NULL,
    ts         REAL NOT NULL,
    PRIMARY KEY (profile_id, audience)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS memberships_by_audience ON memberships (audience, member);

-- A suppression flow holding a person back from its audiences until `until`.
CREATE TABLE IF NOT EXISTS suppressions (
    profile_id INTEGER NOT NULL,
    flow       TEXT NOT NULL,
    since      REAL NOT NULL,
    until      REAL NOT NULL,
    PRIMARY KEY (profile_id, flow)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS suppressions_by_until ON suppressions (until);

-- Lookalike segments segcrit created on a seed audience: created once, then left alone.
CREATE TABLE IF NOT EXISTS lookalikes (
    name          TEXT PRIMARY KEY,
    seed_audience TEXT NOT NULL,
    target_size   INTEGER NOT NULL,
    segment_id    TEXT,
    created_at    REAL
) WITHOUT ROWID;

-- Scheduled jobs: when each last ran and is next due (the lease of the same name guards a run).
CREATE TABLE IF NOT EXISTS jobs (
    name        TEXT PRIMARY KEY,
    last_run_at REAL,
    last_result TEXT,
    next_run_at REAL NOT NULL
) WITHOUT ROWID;

-- One identifier as Criteo should hold it in one audience (desired: 0/1) and as Criteo holds it
-- as far as we know (acked): 0 not held, 1 held, 2 unknown (a call that may have changed it is in
-- flight or went unanswered). A row with desired != acked is a pending change (an unknown one
-- always is); dead_letter_id parks it. claim_until: a call carrying the row is in flight until
-- then (an expired claim counts as a lost answer); acked_before: acked when the call was claimed,
-- restored when Criteo refuses the call.
CREATE TABLE IF NOT EXISTS targets (
    audience       TEXT NOT NULL,
    id_type        TEXT NOT NULL,
    id_value       TEXT NOT NULL,
    profile_id     INTEGER,
    desired        INTEGER NOT NULL,
    acked          INTEGER NOT NULL DEFAULT 0,
    since          REAL NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_at        REAL NOT NULL DEFAULT 0,
    first_failure  REAL,
    dead_letter_id INTEGER,
    claim_until    REAL,
    acked_before   INTEGER,
    PRIMARY KEY (audience, id_type, id_value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS targets_by_profile ON targets (profile_id);
-- A pending change is a row WHERE desired != acked AND dead_letter_id IS NULL: this index and the
-- targets_pending_* triggers (the `changes_pending` counter) say so; change them together.
CREATE INDEX IF NOT EXISTS targets_pending ON targets (since)
    WHERE desired != acked AND dead_letter_id IS NULL;
CREATE INDEX IF NOT EXISTS targets_dead ON targets (dead_letter_id) WHERE dead_letter_id IS NOT NULL;

-- held_since: set while the audience is over audience_sync's max_new_audiences_per_day (SPEC 4.1):
-- its memberships and targets are kept, but it gets no Criteo segment and nothing is delivered.
-- admitted_day: the UTC day (days since 1970-01-01) whose allowance admitting it used; NULL when
-- it used none (an audience the config names never counts).
CREATE TABLE IF NOT EXISTS audiences (
    name          TEXT PRIMARY KEY,
    segment_id    TEXT,
    auto_create   INTEGER NOT NULL DEFAULT 1,
    created_by_us INTEGER NOT NULL DEFAULT 0,
    first_seen_at REAL,
    admitted_day  INTEGER,
    held_since    REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audiences_by_admitted_day ON audiences (admitted_day) WHERE admitted_day IS NOT NULL;
CREATE INDEX IF NOT EXISTS audiences_held ON audiences (held_since) WHERE held_since IS NOT NULL;

CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL DEFAULT 'contact_list',  -- contact_list | events | catalog
    created_at  REAL NOT NULL,
    audience    TEXT NOT NULL,
    operation   TEXT NOT NULL,
    id_type     TEXT NOT NULL,
    count       INTEGER NOT NULL,
    status      INTEGER,
    error       TEXT NOT NULL,
    replayed_at REAL
);

-- Orders seen, one row per order id: conversions send each once (sent_at), profile facts count
-- distinct orders and sum their revenue.
CREATE TABLE IF NOT EXISTS orders (
    order_id   TEXT PRIMARY KEY,
    profile_id INTEGER,
    ts         REAL NOT NULL,
    revenue    REAL,
    currency   TEXT,
    sent_at    REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orders_by_profile ON orders (profile_id);

-- Events API events waiting to be sent; the events of one person that wait together go in one
-- document. header: the document's per-person part (JSON); body: one entry of events[].
CREATE TABLE IF NOT EXISTS criteo_events (
    id             INTEGER PRIMARY KEY,
    person         TEXT NOT NULL,
    profile_id     INTEGER,
    header         BLOB NOT NULL,
    body           BLOB NOT NULL,
    created_at     REAL NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_at        REAL NOT NULL DEFAULT 0,
    first_failure  REAL,
    dead_letter_id INTEGER
);
CREATE INDEX IF NOT EXISTS criteo_events_pending ON criteo_events (created_at) WHERE dead_letter_id IS NULL;
CREATE INDEX IF NOT EXISTS criteo_events_by_profile ON criteo_events (profile_id);
CREATE INDEX IF NOT EXISTS criteo_events_dead ON criteo_events (dead_letter_id) WHERE dead_letter_id IS NOT NULL;

-- Catalog products as last seen, and what Criteo was last sent (sent_fingerprint).
CREATE TABLE IF NOT EXISTS products (
    merchant_id      TEXT NOT NULL,
    product_id       TEXT NOT NULL,
    fields           BLOB NOT NULL,
    fingerprint      TEXT NOT NULL,
    sent_fingerprint TEXT,
    missing          TEXT,            -- Criteo's required fields it lacks; not sent while set
    updated_at       REAL NOT NULL,
    batch_token      TEXT,            -- the batch it is in, while that batch is not final
    next_at          REAL NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    first_failure    REAL,
    dead_letter_id   INTEGER,
    status           TEXT,            -- accepted | error, from the last final report
    errors           TEXT,
    PRIMARY KEY (merchant_id, product_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS products_pending ON products (updated_at)
    WHERE missing IS NULL AND batch_token IS NULL AND dead_letter_id IS NULL
    AND (sent_fingerprint IS NULL OR sent_fingerprint != fingerprint);
CREATE INDEX IF NOT EXISTS products_dead ON products (dead_letter_id) WHERE dead_letter_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS catalog_batches (
    token       TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    created_at  REAL NOT NULL,
    products    BLOB NOT NULL,  -- [[product_id, fingerprint], ...]
    next_poll   REAL NOT NULL,
    polls       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Events set aside because processing them raised: kept (sanitised, as stored) for inspection
-- and `segcrit replay --failed`, out of the queue, for retention.failed_events_days.
CREATE TABLE IF NOT EXISTS failed_events (
    seq         INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    received_at REAL NOT NULL,
    body        BLOB NOT NULL,
    error       TEXT NOT NULL,
    failed_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS failed_events_by_time ON failed_events (failed_at);

-- Named leases: which process runs a job (scheduler leader) until when.
CREATE TABLE IF NOT EXISTS leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- Running totals, so that /metrics reads a few rows instead of counting tables on every scrape.
-- `changes_pending`, `dead_letters` (not replayed) and `audiences_held` are kept by the triggers
-- below, in the transaction of the write they count, whichever code path writes; they are
-- counted once when the table is new. `audience_messages_ignored:SOURCE` is added to by
-- processing (messages from a source audience_sync does not accept).
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO counters (name, value)
    SELECT 'changes_pending', (SELECT count(*) FROM targets WHERE desired != acked AND dead_letter_id IS NULL)
    WHERE NOT EXISTS (SELECT 1 FROM counters WHERE name = 'changes_pending');
INSERT INTO counters (name, value)
    SELECT 'dead_letters', (SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL)
    WHERE NOT EXISTS (SELECT 1 FROM counters WHERE name = 'dead_letters');
INSERT INTO counters (name, value)
    SELECT 'audiences_held', (SELECT count(*) FROM audiences WHERE held_since IS NOT NULL)
    WHERE NOT EXISTS (SELECT 1 FROM counters WHERE name = 'audiences_held');

CREATE TRIGGER IF NOT EXISTS targets_pending_insert AFTER INSERT ON targets
    WHEN NEW.desired != NEW.acked AND NEW.dead_letter_id IS NULL
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'changes_pending';
END;
CREATE TRIGGER IF NOT EXISTS targets_pending_delete AFTER DELETE ON targets
    WHEN OLD.desired != OLD.acked AND OLD.dead_letter_id IS NULL
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'changes_pending';
END;
CREATE TRIGGER IF NOT EXISTS targets_pending_update AFTER UPDATE OF desired, acked, dead_letter_id ON targets
    WHEN (OLD.desired != OLD.acked AND OLD.dead_letter_id IS NULL)
        != (NEW.desired != NEW.acked AND NEW.dead_letter_id IS NULL)
BEGIN
    UPDATE counters SET value = value + (CASE WHEN NEW.dead_letter_id IS NULL AND NEW.desired != NEW.acked
        THEN 1 ELSE -1 END) WHERE name = 'changes_pending';
END;

CREATE TRIGGER IF NOT EXISTS dead_letters_open_insert AFTER INSERT ON dead_letters
    WHEN NEW.replayed_at IS NULL
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'dead_letters';
END;
CREATE TRIGGER IF NOT EXISTS dead_letters_open_delete AFTER DELETE ON dead_letters
    WHEN OLD.replayed_at IS NULL
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'dead_letters';
END;
CREATE TRIGGER IF NOT EXISTS dead_letters_open_update AFTER UPDATE OF replayed_at ON dead_letters
    WHEN (OLD.replayed_at IS NULL) != (NEW.replayed_at IS NULL)
BEGIN
    UPDATE counters SET value = value + (CASE WHEN NEW.replayed_at IS NULL THEN 1 ELSE -1 END)
        WHERE name = 'dead_letters';
END;

CREATE TRIGGER IF NOT EXISTS audiences_held_insert AFTER INSERT ON audiences
    WHEN NEW.held_since IS NOT NULL
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'audiences_held';
END;
CREATE TRIGGER IF NOT EXISTS audiences_held_delete AFTER DELETE ON audiences
    WHEN OLD.held_since IS NOT NULL
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'audiences_held';
END;
CREATE TRIGGER IF NOT EXISTS audiences_held_update AFTER UPDATE OF held_since ON audiences
    WHEN (OLD.held_since IS NULL) != (NEW.held_since IS NULL)
BEGIN
    UPDATE counters SET value = value + (CASE WHEN NEW.held_since IS NULL THEN -1 ELSE 1 END)
        WHERE name = 'audiences_held';
END;

-- Enrichment (segcrit.enrichment): one row per (lookup, profile holding the lookup's key). due_at:
-- when it is looked up next; version: bumped whenever processing asks for a lookup (a new
-- profile, a new key), so that an answer already in flight does not postpone that request.
-- Rows go with their profile (merge, erasure).
CREATE TABLE IF NOT EXISTS lookups (
    lookup       TEXT NOT NULL,
    profile_id   INTEGER NOT NULL,
    due_at       REAL NOT NULL,
    version      INTEGER NOT NULL DEFAULT 0,
    looked_up_at REAL,
    outcome      TEXT,             -- found | unknown | no_key
    answer       TEXT,             -- fingerprint of the last answer applied: the same is not applied twice
    PRIMARY KEY (lookup, profile_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lookups_due ON lookups (lookup, due_at);
CREATE INDEX IF NOT EXISTS lookups_by_profile ON lookups (profile_id);

-- One row per configured lookup: whether its source answers (segcrit status, /metrics).
CREATE TABLE IF NOT EXISTS lookup_sources (
    lookup          TEXT PRIMARY KEY,
    failing_since   REAL,            -- NULL while it answers
    last_error      TEXT,            -- without the keys looked up, emails redacted
    next_try_at     REAL,
    last_success_at REAL,
    lookups         INTEGER NOT NULL DEFAULT 0,   -- people looked up, in all
    requests        INTEGER NOT NULL DEFAULT 0,   -- queries or HTTP requests made, in all
    seeded_key      TEXT             -- the key the profiles known before were queued by
) WITHOUT ROWID;

-- ------------------------------------------------------------------------------------------------
-- The admin UI's part (segcrit.store.sqlite_admin).

-- Per-audience counts of `targets`, kept by triggers so that the admin pages, `status` and the
-- metrics read 100 rows instead of summing millions. One row of `targets` counts in:
--   desired        desired = 1
--   acknowledged   acked = 1 (held; 2 is unknown: a call that may have changed it went unanswered)
--   pending_add    desired = 1 AND acked != 1 AND dead_letter_id IS NULL
--   pending_remove desired = 0 AND acked != 0 AND dead_letter_id IS NULL
--   dead           dead_letter_id IS NOT NULL
-- last_sync_at: wall-clock time of the last change of `acked` to held or not held (Criteo answered).
CREATE TABLE IF NOT EXISTS audience_counts (
    audience       TEXT PRIMARY KEY,
    desired        INTEGER NOT NULL DEFAULT 0,
    acknowledged   INTEGER NOT NULL DEFAULT 0,
    pending_add    INTEGER NOT NULL DEFAULT 0,
    pending_remove INTEGER NOT NULL DEFAULT 0,
    dead           INTEGER NOT NULL DEFAULT 0,
    last_sync_at   REAL
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS targets_count_insert AFTER INSERT ON targets BEGIN
    INSERT INTO audience_counts (audience, desired, acknowledged, pending_add, pending_remove, dead, last_sync_at)
    VALUES (
        NEW.audience, NEW.desired, NEW.acked = 1,
        NEW.desired = 1 AND NEW.acked != 1 AND NEW.dead_letter_id IS NULL,
        NEW.desired = 0 AND NEW.acked != 0 AND NEW.dead_letter_id IS NULL,
        NEW.dead_letter_id IS NOT NULL,
        CASE WHEN NEW.acked = 1 THEN (julianday('now') - 2440587.5) * 86400.0 END
    )
    ON CONFLICT (audience) DO UPDATE SET
        desired = desired + excluded.desired,
        acknowledged = acknowledged + excluded.acknowledged,
        pending_add = pending_add + excluded.pending_add,
        pending_remove = pending_remove + excluded.pending_remove,
        dead = dead + excluded.dead,
        last_sync_at = coalesce(excluded.last_sync_at, last_sync_at);
END;

CREATE TRIGGER IF NOT EXISTS targets_count_delete AFTER DELETE ON targets BEGIN
    UPDATE audience_counts SET
        desired = desired - OLD.desired,
        acknowledged = acknowledged - (OLD.acked = 1),
        pending_add = pending_add - (OLD.desired = 1 AND OLD.acked != 1 AND OLD.dead_letter_id IS NULL),
        pending_remove = pending_remove - (OLD.desired = 0 AND OLD.acked != 0 AND OLD.dead_letter_id IS NULL),
        dead = dead - (OLD.dead_letter_id IS NOT NULL)
    WHERE audience = OLD.audience;
END;

-- Only when a counted column changes: retries (attempts, next_at) and merges (profile_id) cost nothing.
CREATE TRIGGER IF NOT EXISTS targets_count_update AFTER UPDATE OF desired, acked, dead_letter_id ON targets
WHEN OLD.desired != NEW.desired OR OLD.acked != NEW.acked
    OR (OLD.dead_letter_id IS NULL) != (NEW.dead_letter_id IS NULL)
BEGIN
    UPDATE audience_counts SET
        desired = desired + NEW.desired - OLD.desired,
        acknowledged = acknowledged + (NEW.acked = 1) - (OLD.acked = 1),
        pending_add = pending_add + (NEW.desired = 1 AND NEW.acked != 1 AND NEW.dead_letter_id IS NULL)
            - (OLD.desired = 1 AND OLD.acked != 1 AND OLD.dead_letter_id IS NULL),
        pending_remove = pending_remove + (NEW.desired = 0 AND NEW.acked != 0 AND NEW.dead_letter_id IS NULL)
            - (OLD.desired = 0 AND OLD.acked != 0 AND OLD.dead_letter_id IS NULL),
        dead = dead + (NEW.dead_letter_id IS NOT NULL) - (OLD.dead_letter_id IS NOT NULL),
        last_sync_at = CASE WHEN NEW.acked != OLD.acked AND NEW.acked != 2 THEN (julianday('now') - 2440587.5) * 86400.0
                       ELSE last_sync_at END
    WHERE audience = NEW.audience;
END;

-- A store that had targets before these triggers existed: count them once (the meta row says done).
INSERT INTO audience_counts (audience, desired, acknowledged, pending_add, pending_remove, dead)
SELECT audience, sum(desired), sum(acked = 1),
       sum(desired = 1 AND acked != 1 AND dead_letter_id IS NULL),
       sum(desired = 0 AND acked != 0 AND dead_letter_id IS NULL),
       sum(dead_letter_id IS NOT NULL)
FROM targets WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'audience_counts') GROUP BY audience
ON CONFLICT (audience) DO NOTHING;
INSERT INTO meta (key, value) VALUES ('audience_counts', '1') ON CONFLICT (key) DO NOTHING;

-- Open dead letters, read by the overview, the audience pages and /metrics without a scan; what
-- each holds, so that a replay (a button in the admin UI) reads only the letter's own rows.
CREATE INDEX IF NOT EXISTS dead_letters_open ON dead_letters (audience) WHERE replayed_at IS NULL;
CREATE INDEX IF NOT EXISTS criteo_events_dead ON criteo_events (dead_letter_id) WHERE dead_letter_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS products_dead ON products (dead_letter_id) WHERE dead_letter_id IS NOT NULL;

-- Per-minute counters behind the overview's charts: one row per (minute, series, labels), written
-- by every process (counters add up, gauges keep the highest value seen), pruned after retention.
CREATE TABLE IF NOT EXISTS admin_counters (
    minute INTEGER NOT NULL,   -- epoch seconds of the minute's start
    series TEXT NOT NULL,
    labels TEXT NOT NULL,      -- JSON object, keys sorted
    value  REAL NOT NULL,
    PRIMARY KEY (minute, series, labels)
) WITHOUT ROWID;

-- Recent Criteo calls (the last few hundred per endpoint): identifiers masked, answers truncated.
CREATE TABLE IF NOT EXISTS admin_calls (
    id          INTEGER PRIMARY KEY,
    at          REAL NOT NULL,
    endpoint    TEXT NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    status      INTEGER NOT NULL,  -- 0: no answer (timeout, connection error)
    duration_ms REAL NOT NULL,
    segment_id  TEXT,
    audience    TEXT,
    summary     TEXT NOT NULL,     -- JSON: what was sent (operation, identifier type, count, masked sample)
    answer      TEXT               -- Criteo's answer, masked and cut
);
CREATE INDEX IF NOT EXISTS admin_calls_by_endpoint ON admin_calls (endpoint, id);
CREATE INDEX IF NOT EXISTS admin_calls_by_audience ON admin_calls (audience, id) WHERE audience IS NOT NULL;

-- The event debugger: the latest accepted and refused messages per source, sanitised (no raw
-- email or phone); user_id/anonymous_id/email find a person's recent events and go with them
-- when the person is forgotten (triggers below).
CREATE TABLE IF NOT EXISTS admin_samples (
    id           INTEGER PRIMARY KEY,
    at           REAL NOT NULL,
    source       TEXT NOT NULL,
    accepted     INTEGER NOT NULL,
    reason       TEXT,
    type         TEXT,
    event        TEXT,
    user_id      TEXT,
    anonymous_id TEXT,
    email        TEXT,             -- sha256 of the first email the message carries
    body         BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS admin_samples_by_source ON admin_samples (source, accepted, id);
CREATE INDEX IF NOT EXISTS admin_samples_by_user ON admin_samples (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS admin_samples_by_anonymous ON admin_samples (anonymous_id) WHERE anonymous_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS admin_samples_by_email ON admin_samples (email) WHERE email IS NOT NULL;

-- Forgetting a person (forget, a delete message) tombstones their identifiers: their samples go too.
CREATE TRIGGER IF NOT EXISTS tombstones_forget_samples_insert AFTER INSERT ON tombstones BEGIN
    DELETE FROM admin_samples WHERE (NEW.kind = 'user_id' AND user_id = NEW.value)
        OR (NEW.kind = 'anonymous_id' AND anonymous_id = NEW.value) OR (NEW.kind = 'email' AND email = NEW.value);
END;
CREATE TRIGGER IF NOT EXISTS tombstones_forget_samples_update AFTER UPDATE ON tombstones BEGIN
    DELETE FROM admin_samples WHERE (NEW.kind = 'user_id' AND user_id = NEW.value)
        OR (NEW.kind = 'anonymous_id' AND anonymous_id = NEW.value) OR (NEW.kind = 'email' AND email = NEW.value);
END;

-- Resyncs asked for from the admin UI, run by the delivery thread (the one place that calls Criteo).
CREATE TABLE IF NOT EXISTS admin_resyncs (
    audience     TEXT PRIMARY KEY,
    requested_at REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    result       TEXT
) WITHOUT ROWID;
