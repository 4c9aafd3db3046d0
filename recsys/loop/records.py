"""Every cycle of the loop as a row of ``retrain_cycles`` (feedback/migrations/0004): the one record that the
CLI prints, the metrics export and the Grafana panel read, wherever the cycle ran."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg

from recsys.core.dsn import connect
from recsys.core.errors import ConfigError, DataError, RecsysError

Kind = Literal["retrain", "items", "canary"]
Decision = Literal["promoted", "refused", "failed", "unchanged", "canary", "withdrawn"]

INSERT = """
INSERT INTO retrain_cycles (kind, started, finished, served_version, published_version, data_since, data_until,
                            decision, reason, gate, durations, items_added)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12)
RETURNING id
"""


class RecordError(RecsysError):
    """The cycle ran but could not be recorded (the database is unreachable or not migrated)."""


@dataclass(frozen=True)
class Cycle:
    kind: Kind
    started: datetime
    finished: datetime
    decision: Decision
    reason: str
    served_version: int | None = None
    published_version: int | None = None
    data_since: datetime | None = None
    data_until: datetime | None = None
    gate: dict[str, Any] | None = None
    durations: dict[str, float] = field(default_factory=dict)
    items_added: int = 0

    @property
    def seconds(self) -> float:
        return (self.finished - self.started).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("started", "finished", "data_since", "data_until"):
            out[key] = None if out[key] is None else out[key].isoformat()
        return out


def record(dsn: str, cycle: Cycle, *, timeout_s: float = 10.0) -> int:
    """Inserts ``cycle``; returns its id."""
    return asyncio.run(_record(dsn, cycle, timeout_s))


async def _record(dsn: str, cycle: Cycle, timeout_s: float) -> int:
    try:
        conn = await connect(dsn, timeout=timeout_s)  # any failure (a bad URL too): one line, no password
    except (ConfigError, DataError) as exc:
        raise RecordError(f"cannot record the {cycle.kind} cycle: {exc}") from None
    try:
        row_id: int = await conn.fetchval(
            INSERT,
            cycle.kind,
            cycle.started,
            cycle.finished,
            cycle.served_version,
            cycle.published_version,
            cycle.data_since,
            cycle.data_until,
            cycle.decision,
            cycle.reason,
            None if cycle.gate is None else json.dumps(cycle.gate),
            json.dumps(cycle.durations),
            cycle.items_added,
            timeout=timeout_s,
        )
        return row_id
    except asyncpg.UndefinedTableError as exc:
        raise RecordError("retrain_cycles is missing: start the feedback writer once (it migrates)") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise RecordError(f"cannot record the {cycle.kind} cycle: {exc}") from exc
    finally:
        await conn.close()
