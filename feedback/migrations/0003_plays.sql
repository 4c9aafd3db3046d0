-- Organic plays: what listeners played outside recommendations (the client's player reports them). With the
-- clicks in feedback they are the positives retraining learns from (trainer/data/log.py), and with seq the live
-- fold-in poller follows them as they arrive.
--
-- Idempotency as for feedback: event_id is the client's key (or one derived from the content), a retried batch
-- hits the primary key and is skipped. ts is the client's play time, validated by the writer; received is when
-- the server stored it. Append-only in time order, hence BRIN on ts (cheap, serves the trainer's since/until
-- windows and the day-partitioned export).
CREATE TABLE plays (
    event_id   text PRIMARY KEY,
    ts         timestamptz NOT NULL,
    user_id    text NOT NULL,
    item_id    text NOT NULL,
    ms_played  integer,
    received   timestamptz NOT NULL DEFAULT now(),
    seq        bigserial
);
CREATE INDEX plays_ts_brin ON plays USING brin (ts);
CREATE INDEX plays_seq ON plays (seq);
