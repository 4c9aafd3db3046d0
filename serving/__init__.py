"""Everything a Triton python stub imports, and nothing else: numpy only (asyncpg for the live poller).

* :mod:`serving.contract`: tensor names, limits, the files of a published version;
* :mod:`serving.stub`: the pb_utils glue (config parsed once, one response per request, bad requests alone);
* :mod:`serving.models`: the served steps (lookup, scorer, top-k, fused), re-exported by ``triton_models/*/model.py``;
* :mod:`serving.lookup`, :mod:`serving.scorer`, :mod:`serving.topk`: their numpy work, testable without a server;
* :mod:`serving.fold_in`, :mod:`serving.weights`, :mod:`serving.poller`: the live fold-in of new plays.

Never imports torch (only :class:`serving.scorer.Scorer` does, for a TorchScript version), ``trainer`` or
``recsys``: an import contract in CI (``pyproject.toml``, import-linter) keeps it so.
"""
