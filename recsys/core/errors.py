"""Errors the trainer raises on purpose.

    RecsysError
    ├── DataError           input data is missing, malformed or empty (user's fault: one-line message)
    ├── ConfigError         an option or hyperparameter is out of range
    ├── ArtifactError       a saved model directory is missing a file or is from an unknown format
    ├── ExportError         (trainer.export) weights or exports fail their checks; nothing is published
    ├── TritonServerError   (recsys.stack.triton) the local server cannot be found, started or reached
    └── TritonCallError     (recsys.core.triton_client) an inference call failed; keeps Triton's status code

The CLI prints ``str(exc)`` for these and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Base of every error the project raises deliberately."""


class DataError(RecsysError):
    """Input data cannot be used as given."""


class ConfigError(RecsysError):
    """An option or hyperparameter is invalid."""


class ArtifactError(RecsysError):
    """A saved model directory cannot be read."""
