"""The python-backend glue every served step shares: the config parsed once, each request answered on its own.

Triton hands ``execute`` a list of requests (a dynamic batch). :class:`BatchedModel` reads and checks each one
(:meth:`BatchedModel.read`); a bad request gets its own INVALID_ARG response and never reaches the computation,
so it cannot fail the requests batched with it. The good ones are computed together (:meth:`BatchedModel.run`)
and split back, one response per request, in order. Only a Triton stub imports this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils

log = logging.getLogger(__name__)

Arrays = tuple[npt.NDArray[Any], ...]


class BadRequest(ValueError):  # noqa: N818  (an outcome of one request, answered as INVALID_ARG)
    """One request of a batch is malformed: it is answered alone, with this message."""


def input_array(request: Any, name: str, dtype: type[np.generic] | None = None) -> npt.NDArray[Any]:
    """The request's tensor ``name`` as numpy (BadRequest when it is missing or of another dtype)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise BadRequest(f"input {name} is missing")
    array: npt.NDArray[Any] = tensor.as_numpy()
    if dtype is not None and array.dtype != dtype:
        raise BadRequest(f"{name} must be {np.dtype(dtype).name}, got {array.dtype.name}")
    return array


def split(array: npt.NDArray[Any], sizes: Sequence[int]) -> list[npt.NDArray[Any]]:
    """``array``'s rows cut back into consecutive blocks of ``sizes``."""
    return np.split(array, np.cumsum(sizes)[:-1])


class BatchedModel:
    """Base of every served step: ``initialize`` parses ``args`` once; ``execute`` answers one response per request.

    Subclasses set :meth:`setup` (load this version's files), :meth:`read` (one request -> its input arrays, or
    BadRequest) and :meth:`run` (the arrays of every good request -> their output tensors, by name).
    """

    params: dict[str, str]
    folder: Path
    version: int

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.folder = Path(args["model_repository"]) / args["model_version"]
        self.version = int(args["model_version"])
        self.setup()

    def setup(self) -> None:
        """Loads this version's files (``self.folder``) and reads ``self.params``."""

    def param(self, key: str, default: str) -> str:
        return self.params.get(key, default)

    def read(self, request: Any) -> Arrays:
        raise NotImplementedError

    def run(self, batch: list[Arrays]) -> list[dict[str, npt.NDArray[Any]]]:
        raise NotImplementedError

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        good: list[int] = []
        batch: list[Arrays] = []
        for n, request in enumerate(requests):
            try:
                batch.append(self.read(request))
                good.append(n)
            except BadRequest as exc:
                responses[n] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                )
        if batch:
            try:
                outputs = self.run(batch)
            except Exception as exc:  # answered, not raised: Triton would fail the batch without a message
                log.exception("%s: a batch of %d failed", type(self).__name__, len(batch))
                error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
                outputs = None
            for i, n in enumerate(good):
                if outputs is None:
                    responses[n] = pb_utils.InferenceResponse(error=error)
                else:
                    tensors = [pb_utils.Tensor(name, np.ascontiguousarray(a)) for name, a in outputs[i].items()]
                    responses[n] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses
