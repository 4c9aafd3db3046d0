"""Triton python-backend entry point of recsys_scorer_ann: the model is `serving.models.AnnScorerModel`."""

from serving.models import AnnScorerModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
