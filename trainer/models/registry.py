"""Model names as the CLI and saved files spell them, mapped to classes."""

from __future__ import annotations

from recsys.core.errors import ConfigError
from trainer.models.als import ALS
from trainer.models.base import Recommender
from trainer.models.bpr import BPR
from trainer.models.gru4rec import GRU4Rec
from trainer.models.popularity import Popularity

MODELS: dict[str, type[Recommender]] = {cls.name: cls for cls in (Popularity, BPR, ALS, GRU4Rec)}


def model_class(name: str) -> type[Recommender]:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
