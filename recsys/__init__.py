"""The ``recsys`` command line, the settings shared by every part of the system, and the Python API.

``from recsys import ALS, BPR`` gives the implicit-style models (:mod:`recsys.recommenders`). They are exported
lazily (PEP 562): the gateway and the feedback writer import ``recsys.core`` through this package, and must not
pay for (or ship) torch and the trainer, which the models need.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys.recommenders import ALS, BPR, FactorRecommender
    from trainer.data.interactions import Interactions
    from trainer.data.load import load_dataset

#: Public name -> the module that defines it (imported on first use only).
_EXPORTS = {
    "ALS": "recsys.recommenders",
    "BPR": "recsys.recommenders",
    "FactorRecommender": "recsys.recommenders",
    "Interactions": "trainer.data.interactions",
    "load_dataset": "trainer.data.load",
}

__all__ = ["ALS", "BPR", "FactorRecommender", "Interactions", "load_dataset"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
