"""Every PromQL expression the committed dashboards and rules evaluate, read back from the files in ``grafana/``.

A live check against a running Prometheus needs nothing else: take ``panel_queries()`` and ``recording_rules()``,
``substitute`` Grafana's variables in the panel expressions, and run each through ``/api/v1/query``. The offline
tests use the same readers, so what they check is what Grafana and Prometheus load.

Variables: the panels use only ``$__rate_interval`` (``VARIABLES``). Grafana sets it to
max(4 x the datasource's scrape interval, the panel's step + scrape interval); outside Grafana pick a window that
holds at least two scrapes, e.g. ``"30s"`` with a 1 s scrape interval.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

GRAFANA_DIR = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
RULES_DIR = GRAFANA_DIR / "prometheus" / "rules"

RATE_INTERVAL = "$__rate_interval"
#: Every variable a panel expression may contain, and what it stands for.
VARIABLES: Mapping[str, str] = {
    RATE_INTERVAL: "range of rate()/increase()/histogram windows; Grafana: max(4 x scrape interval, step + scrape)",
}
#: What ``substitute`` uses for a variable it is not given.
DEFAULT_VALUES: Mapping[str, str] = {RATE_INTERVAL: "1m"}

RuleKind = Literal["record", "alert"]


@dataclass(frozen=True)
class PanelQuery:
    """One target (query) of one dashboard panel."""

    dashboard_uid: str
    dashboard_title: str
    panel_id: int
    panel_title: str
    ref_id: str
    expr: str
    legend: str = ""

    @property
    def key(self) -> str:
        """A readable unique name, e.g. for a pytest id: ``recsys-ab/Click-through rate by group/A``."""
        return f"{self.dashboard_uid}/{self.panel_title}/{self.ref_id}"

    def rendered(self, values: Mapping[str, str] | None = None) -> str:
        """The expression with Grafana's variables replaced (see ``substitute``)."""
        return substitute(self.expr, values)

    @property
    def metrics(self) -> frozenset[str]:
        """The series names this query selects: each must have data for the panel to show any."""
        return metric_names(self.expr)


@dataclass(frozen=True)
class RuleExpression:
    """One recording or alerting rule. ``name`` is the recorded series name or the alert name."""

    file: str
    group: str
    kind: RuleKind
    name: str
    expr: str
    labels: Mapping[str, str] = field(default_factory=dict)
    for_: str | None = None

    @property
    def metrics(self) -> frozenset[str]:
        return metric_names(self.expr)


def panel_queries(dashboards_dir: Path = DASHBOARDS_DIR) -> list[PanelQuery]:
    """Every target of every panel (rows skipped, nested row panels included) of every ``*.json`` dashboard."""
    return [query for path in sorted(dashboards_dir.glob("*.json")) for query in _queries(json.loads(path.read_text()))]


def _queries(dashboard: dict[str, Any]) -> Iterator[PanelQuery]:
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            yield PanelQuery(
                dashboard_uid=dashboard["uid"],
                dashboard_title=dashboard["title"],
                panel_id=panel["id"],
                panel_title=panel["title"],
                ref_id=target.get("refId", ""),
                expr=target["expr"],
                legend=target.get("legendFormat", ""),
            )


def _panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        if panel.get("type") == "row":
            yield from _panels(panel.get("panels", []))
        else:
            yield panel


def rule_expressions(rules_dir: Path = RULES_DIR) -> list[RuleExpression]:
    """Every rule of every ``*.yml`` rule file, in file and group order."""
    rules: list[RuleExpression] = []
    for path in sorted(rules_dir.glob("*.yml")):
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                kind: RuleKind = "record" if "record" in rule else "alert"
                rules.append(
                    RuleExpression(
                        file=path.name,
                        group=group["name"],
                        kind=kind,
                        name=rule[kind],
                        expr=str(rule["expr"]).strip(),
                        labels={str(k): str(v) for k, v in (rule.get("labels") or {}).items()},
                        for_=rule.get("for"),
                    )
                )
    return rules


def recording_rules(rules_dir: Path = RULES_DIR) -> list[RuleExpression]:
    return [r for r in rule_expressions(rules_dir) if r.kind == "record"]


def alerting_rules(rules_dir: Path = RULES_DIR) -> list[RuleExpression]:
    return [r for r in rule_expressions(rules_dir) if r.kind == "alert"]


def recorded_names(rules_dir: Path = RULES_DIR) -> frozenset[str]:
    """Series names the recording rules write (panels and alerts may read these as well as exported metrics)."""
    return frozenset(r.name for r in recording_rules(rules_dir))


_CONSTANT = re.compile(r"^vector\(\s*([0-9.eE+-]+)\s*\)$")
SHARE_RULE = "ab_configured_share"


def configured_shares(rules_dir: Path = RULES_DIR) -> dict[str, float]:
    """The A/B split the sample-ratio rules test against, ``{group: share}``; it must match the experiment file."""
    shares: dict[str, float] = {}
    for rule in recording_rules(rules_dir):
        if rule.name != SHARE_RULE:
            continue
        match = _CONSTANT.match(rule.expr)
        if match is None or "group" not in rule.labels:
            raise ValueError(f"{SHARE_RULE} must be `vector(<number>)` with a group label, got {rule.expr!r}")
        shares[rule.labels["group"]] = float(match.group(1))
    return shares


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replace Grafana variables (``$x``, ``${x}``, ``[[x]]``) with ``values``, else ``DEFAULT_VALUES``.

    Raises ``ValueError`` for a variable with no value, so a query that needs one nobody documented fails loudly.
    """
    given = {**DEFAULT_VALUES, **(values or {})}

    def replace(match: re.Match[str]) -> str:
        name = "$" + next(g for g in match.groups() if g is not None)
        if name not in given:
            raise ValueError(f"no value for Grafana variable {name} in {expr!r}; known: {sorted(given)}")
        return given[name]

    return _VARIABLE.sub(replace, expr)


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBER = re.compile(r"(?<![\w:$])(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])*")
_IDENT = re.compile(r"(?<!\$)\b[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"inf", "nan", "atan2"}
)


def metric_names(expr: str) -> frozenset[str]:
    """The metric (series) names an expression selects, found by stripping everything else.

    Not a parser: strings, label matchers, ranges, grouping clauses and numbers are removed, then every identifier
    not followed by ``(`` (a function or aggregation) and not a keyword is a metric name. That covers the PromQL
    these files use; ``promtool check rules`` (run by the tests on every expression) guards the syntax itself.
    """
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name = match.group(0)
        rest = text[match.end() :].lstrip()
        if name.lower() in _KEYWORDS or rest.startswith("("):
            continue
        names.add(name)
    return frozenset(names)
