"""Triton python-backend entry point of recsys_lookup: the model is `serving.models.Lookup`."""

from serving.models import Lookup as TritonPythonModel

__all__ = ["TritonPythonModel"]
