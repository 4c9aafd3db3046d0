-- Every cycle of the training loop (recsys retrain, recsys items refresh): what it read, what the gate measured,
-- what it decided and how long each step took. The loop's metrics (model age, last result, duration, items added)
-- and its Grafana panel read this table, so a CronJob on EKS and a local `recsys retrain --every` report alike.
CREATE TABLE retrain_cycles (
    id                bigserial PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('retrain', 'items')),
    started           timestamptz NOT NULL,
    finished          timestamptz NOT NULL,
    served_version    integer,            -- the version serving when the cycle began
    published_version integer,            -- the version it published (NULL: nothing was published)
    data_since        timestamptz,
    data_until        timestamptz,
    decision          text NOT NULL CHECK (decision IN ('promoted', 'refused', 'failed', 'unchanged')),
    reason            text NOT NULL,
    gate              jsonb,
    durations         jsonb NOT NULL DEFAULT '{}',
    items_added       integer NOT NULL DEFAULT 0
);
CREATE INDEX retrain_cycles_finished ON retrain_cycles (finished);
