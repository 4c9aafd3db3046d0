"""The python-backend glue every served step shares: the config parsed once, each request answered on its own.

Triton hands ``execute`` a list of requests (a dynamic batch), and any of them may come straight from a client
rather than from the ensemble. :class:`BatchedModel` reads and checks each one (:meth:`BatchedModel.read`, with the
checks below: dtypes, one batch size for all inputs, finite floats, indices inside the catalogue, TOP_K's range);
a bad request gets its own INVALID_ARG response and never reaches the computation. The good ones are computed
together (:meth:`BatchedModel.run`) and split back, one response per request, in order. Should the batched
computation still fail (an input no check foresaw), each request is computed again on its own, so the one that
breaks it fails alone and the others are answered. Only a Triton stub imports this module.
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

from serving.contract import PAD

log = logging.getLogger(__name__)

Arrays = tuple[npt.NDArray[Any], ...]
Outputs = dict[str, npt.NDArray[Any]]


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


def require_rows(named: dict[str, npt.NDArray[Any]]) -> int:
    """The batch size all of one request's inputs share (BadRequest when they differ, or are empty or 0-d)."""
    rows = {name: (array.shape[0] if array.ndim else 0) for name, array in named.items()}
    sizes = set(rows.values())
    if len(sizes) != 1 or 0 in sizes:
        raise BadRequest(f"every input needs the same batch size >= 1, got {rows}")
    return sizes.pop()


def require_finite(name: str, array: npt.NDArray[Any]) -> None:
    if not np.isfinite(array).all():
        raise BadRequest(f"{name} holds NaN or infinite values")


def require_indices(name: str, array: npt.NDArray[Any], upper: int | None) -> None:
    """Item indices: each in ``0..upper-1``, or -1 (padding)."""
    if not array.size:
        return
    if int(array.min()) < PAD:
        raise BadRequest(f"{name} holds item indices >= 0, or {PAD} as padding")
    if upper is not None and int(array.max()) >= upper:
        raise BadRequest(f"{name} indices must be below the catalogue size {upper}")


def require_top_k(array: npt.NDArray[Any], max_top_k: int) -> None:
    bad = array[(array < 1) | (array > max_top_k)]
    if bad.size:
        raise BadRequest(f"TOP_K must be in 1..{max_top_k}, got {int(bad.reshape(-1)[0])}")


def require_width(name: str, array: npt.NDArray[Any], width: int | None) -> None:
    if width is not None and (array.ndim != 2 or array.shape[1] != width):
        raise BadRequest(f"{name} must be [batch, {width}], got {list(array.shape)}")


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
        self.name = str(args.get("model_name", type(self).__name__))
        self.setup()

    def setup(self) -> None:
        """Loads this version's files (``self.folder``) and reads ``self.params``."""

    def param(self, key: str, default: str) -> str:
        return self.params.get(key, default)

    def read(self, request: Any) -> Arrays:
        raise NotImplementedError

    def run(self, batch: list[Arrays]) -> list[Outputs]:
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
                responses[n] = _error(str(exc), pb_utils.TritonError.INVALID_ARG)
            except Exception as exc:  # a check itself broke on a hostile tensor: still this request's alone
                message = f"unreadable request: {type(exc).__name__}: {exc}"
                responses[n] = _error(message, pb_utils.TritonError.INVALID_ARG)
        for n, answer in zip(good, self._answer(batch) if batch else [], strict=True):
            if isinstance(answer, str):
                responses[n] = _error(answer, pb_utils.TritonError.INTERNAL)
            else:
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(a)) for name, a in answer.items()]
                responses[n] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def _answer(self, batch: list[Arrays]) -> list[Outputs | str]:
        """Each request's outputs, or the message of its failure: computed together, and one by one after a
        failure of the whole (so a request no check caught fails alone)."""
        try:
            outputs: list[Outputs | str] = list(self.run(batch))
            if len(outputs) != len(batch):
                raise RuntimeError(f"{len(outputs)} answers for {len(batch)} requests")
            return outputs
        except Exception as exc:  # answered, not raised: Triton would fail the batch without a message
            if len(batch) > 1:
                log.warning(
                    "%s: a batch of %d failed (%s); answering it request by request",
                    self.name, len(batch), exc,
                )  # fmt: skip
                return [self._answer([one])[0] for one in batch]
            log.exception("%s: a request failed", self.name)
            return [f"{type(exc).__name__}: {exc}"]


def _error(message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
