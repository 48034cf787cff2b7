-- The admin UI's part of the SQLite schema (segcrit.store.sqlite_admin). Idempotent like the main
-- schema, run after it at every start.

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
