-- Impressions (what the gateway served) and feedback (what the listener did), keyed for idempotency:
-- a replayed or retried event hits the primary key and is skipped (INSERT ... ON CONFLICT DO NOTHING).
--
-- Growth: both tables are append-only in time order, so a BRIN index on ts costs almost nothing and serves the
-- report's time ranges. Past ~100M rows the plan is monthly range partitioning on ts; idempotency then moves to a
-- small unpartitioned key table (event_id, request_id -> ts) because a partitioned table's primary key must
-- include the partition column and a retry carries a new ts.
CREATE TABLE impressions (
    request_id    text PRIMARY KEY,
    ts            timestamptz NOT NULL,
    user_id       text NOT NULL,
    ab_group      text NOT NULL,
    model         text NOT NULL,
    model_version integer NOT NULL,
    items         text[] NOT NULL,
    latency_ms    real NOT NULL,
    fallback      boolean NOT NULL
);
CREATE INDEX impressions_ts_brin ON impressions USING brin (ts);
CREATE INDEX impressions_group_user ON impressions (ab_group, user_id);

CREATE TABLE feedback (
    event_id          text PRIMARY KEY,
    ts                timestamptz NOT NULL,
    request_id        text NOT NULL,
    user_id           text NOT NULL,
    ab_group          text NOT NULL,
    clicked_item      text,
    skipped_items     text[] NOT NULL DEFAULT '{}',
    inference_time_ms real
);
CREATE INDEX feedback_request ON feedback (request_id);
CREATE INDEX feedback_ts_brin ON feedback USING brin (ts);

-- Feedback is stored even when it does not match what was served (the impression may still be on its way when
-- the click arrives); the flags are computed at read time, so arrival order never matters. Reports count only
-- rows with no flag and show how many were flagged.
CREATE VIEW feedback_checked AS
SELECT f.event_id, f.ts, f.request_id, f.user_id, f.ab_group, f.clicked_item, f.skipped_items, f.inference_time_ms,
       i.request_id IS NULL AS orphan,
       (i.request_id IS NOT NULL AND f.clicked_item IS NOT NULL
        AND NOT (f.clicked_item = ANY (i.items))) AS click_not_shown,
       (i.request_id IS NOT NULL AND (i.user_id <> f.user_id OR i.ab_group <> f.ab_group)) AS mismatch
FROM feedback f
LEFT JOIN impressions i ON i.request_id = f.request_id;
