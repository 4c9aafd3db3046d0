"""Triton python-backend entry point of recsys_fused: the model is `serving.models.Fused`."""

from serving.models import Fused as TritonPythonModel

__all__ = ["TritonPythonModel"]
