"""Triton python-backend entry point of recsys_topk: the model is `serving.models.TopK`."""

from serving.models import TopK as TritonPythonModel

__all__ = ["TritonPythonModel"]
