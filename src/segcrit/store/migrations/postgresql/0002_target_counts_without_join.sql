-- audience_counts after an UPDATE of `targets`, from sums over the old and the new rows instead of
-- a join of the two transition tables. PL/pgSQL keeps the plan of that join from the trigger's
-- first run in a session: planned for a few rows (a nested loop), it compared every row with every
-- other when one statement then updated a 50,000-identifier batch, and a claim took minutes.
-- A row whose counted columns did not change adds the same to both sums.
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
        -- Each side: sign, then the counted columns (settled: acked is what Criteo holds, not 2).
        INSERT INTO audience_count_deltas (audience, desired, acknowledged, pending_add, pending_remove, dead, last_sync_at)
        SELECT audience, sum(desired), sum(acknowledged), sum(pending_add), sum(pending_remove), sum(dead),
               -- Criteo answered: rows left the unknown state (a claim's answer), or what it holds
               -- changed with none entering it (a settle without a claim); a claim is no sync.
               CASE WHEN sum(settled) > 0 OR (sum(settled) = 0 AND sum(acknowledged) != 0)
                    THEN extract(epoch FROM clock_timestamp()) END
        FROM (
            SELECT audience, desired, (acked = 1)::int AS acknowledged,
                   (desired = 1 AND acked != 1 AND dead_letter_id IS NULL)::int AS pending_add,
                   (desired = 0 AND acked != 0 AND dead_letter_id IS NULL)::int AS pending_remove,
                   (dead_letter_id IS NOT NULL)::int AS dead, (acked != 2)::int AS settled
            FROM new_rows
            UNION ALL
            SELECT audience, -desired, -(acked = 1)::int,
                   -(desired = 1 AND acked != 1 AND dead_letter_id IS NULL)::int,
                   -(desired = 0 AND acked != 0 AND dead_letter_id IS NULL)::int,
                   -(dead_letter_id IS NOT NULL)::int, -(acked != 2)::int
            FROM old_rows
        ) d
        GROUP BY audience
        HAVING sum(desired) != 0 OR sum(acknowledged) != 0 OR sum(pending_add) != 0 OR sum(pending_remove) != 0
            OR sum(dead) != 0 OR sum(settled) > 0;
    END IF;
    RETURN NULL;
END $$;
