"""Runs on a terminal: the metrics of trained models side by side and a user's top-k (rich tables).

What ``recsys train``, ``recsys recommend`` and the demo print; the A/B report's tables are in
:mod:`recsys.ab_report`.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

METRIC_COLUMNS = ("ndcg@10", "recall@20", "map@10", "coverage@10", "mean_popularity@10")


def metrics_table(rows: dict[str, dict[str, Any]], title: str) -> Table:
    """One row per model (its ``metrics.json``): the ranking metrics and the fit time."""
    table = Table(title=title)
    table.add_column("model")
    for column in (*METRIC_COLUMNS, "fit s"):
        table.add_column(column, justify="right")
    for name, metrics in rows.items():
        values = [f"{metrics[c]:.4f}" for c in METRIC_COLUMNS]
        table.add_row(name, *values, f"{metrics.get('fit_seconds', 0.0):.2f}")
    return table


def recommendation_table(run: Any, user: object, items: Any, scores: Any) -> Table:
    """A user's top-k from a loaded run (``trainer.artifacts.load_run``), item names where the run has them;
    stops at the first ``-1`` (fewer items left than asked for)."""
    table = Table(title=f"top-{len(items)} for user {user} ({run.model.name})")
    table.add_column("#", justify="right")
    table.add_column("item id")
    table.add_column("item")
    table.add_column("score", justify="right")
    for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
        if item < 0:
            break
        table.add_row(str(rank), str(run.item_ids.ids[item]), run.item_label(int(item)), f"{score:.3f}")
    return table
