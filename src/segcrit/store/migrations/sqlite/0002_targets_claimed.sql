-- The contact-list rows a call is carrying (claim_until set), found without reading every target:
-- an owner's start releases the claims its dead predecessor left (`release_claims`), and with a
-- million pending changes a full scan of `targets` kept a restarted `serve` from answering for
-- seconds. Partial: a row enters the index while a call carries it, and leaves it when settled.
-- IF NOT EXISTS: a database from before versioned migrations runs every migration when adopted.
CREATE INDEX IF NOT EXISTS targets_claimed ON targets (claim_until) WHERE claim_until IS NOT NULL;
