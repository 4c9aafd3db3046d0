"""Monitoring: the metric catalogue, and readers of the committed Prometheus rules and Grafana dashboards.

The files themselves live in ``grafana/`` (see ``grafana/README.md``). Nothing here needs Grafana or a running
Prometheus; ``recsys.monitoring.dashboards`` (which regenerates the dashboard JSON) needs the ``dev`` extra's
grafana-foundation-sdk and is therefore not imported here.
"""
