"""Triton python-backend entry point of recsys_session_lookup: the model is `serving.models.SessionLookupModel`."""

from serving.models import SessionLookupModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
