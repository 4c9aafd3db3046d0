"""Recommenders behind one interface: :class:`~trainer.models.base.Recommender`."""

from trainer.models.als import ALS, ALSParams
from trainer.models.base import FactorModel, Params, Recommender
from trainer.models.bpr import BPR, BPRParams
from trainer.models.popularity import Popularity, PopularityParams
from trainer.models.registry import MODELS, model_class

__all__ = [
    "ALS",
    "BPR",
    "MODELS",
    "ALSParams",
    "BPRParams",
    "FactorModel",
    "Params",
    "Popularity",
    "PopularityParams",
    "Recommender",
    "model_class",
]
