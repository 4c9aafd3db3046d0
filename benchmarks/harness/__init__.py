"""What every benchmark shares, so that each benchmark file holds its build, its measurement and its goals only.

* ``facts``: paths, machine, versions, commit, load average, this process's memory;
* ``tables``: Markdown tables from rows, number formatting, the result files (``<stem>.md`` and ``<stem>.json``);
* ``running``: progress lines, list arguments, the work folder, exporter chatter, in-process latency summaries;
* ``perf_analyzer``: Triton's perf_analyzer found, run and parsed, and its percentile and ensemble-step tables;
* ``wrk``: HTTP load through the gateway and NGINX;
* ``catalog``: the serving benchmarks' synthetic catalog, published the real way, and real requests from it.

The memory of server processes comes from ``recsys.stack.memory``, their supervision from ``recsys.stack``.
"""
