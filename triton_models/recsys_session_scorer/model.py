"""Triton python-backend entry point of recsys_session_scorer: the model is `serving.models.ScorerModel`."""

from serving.models import ScorerModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
