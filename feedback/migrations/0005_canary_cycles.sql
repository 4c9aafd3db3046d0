-- Canary rollouts (recsys.loop.canary): a retrain may hand its candidate to the canary group ('canary'), and a
-- canary verdict is a cycle of its own kind that promotes the candidate to everyone or withdraws it.
ALTER TABLE retrain_cycles DROP CONSTRAINT retrain_cycles_kind_check;
ALTER TABLE retrain_cycles ADD CONSTRAINT retrain_cycles_kind_check CHECK (kind IN ('retrain', 'items', 'canary'));
ALTER TABLE retrain_cycles DROP CONSTRAINT retrain_cycles_decision_check;
ALTER TABLE retrain_cycles ADD CONSTRAINT retrain_cycles_decision_check
    CHECK (decision IN ('promoted', 'refused', 'failed', 'unchanged', 'canary', 'withdrawn'));
