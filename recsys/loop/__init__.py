"""The training loop: what turns the log the system writes back into the models it serves.

* :mod:`recsys.loop.items`: new releases between retrains (plays -> the closed-form item step -> a fast publish);
* :mod:`recsys.loop.retrain`: one gated retraining cycle (log -> warm start -> gate -> publish -> hot swap);
* :mod:`recsys.loop.records`: every cycle in PostgreSQL (``retrain_cycles``), for metrics and dashboards.

A tool of the top layer (the CLI runs it; on EKS a CronJob of the trainer image): it may import the trainer and
the kernel, and nothing imports it.
"""
