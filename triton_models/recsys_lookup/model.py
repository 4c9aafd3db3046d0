"""Step 1 of both ensembles: external user id -> user index, the items to exclude, the fallback flag.

Data comes from this version's folder (written by ``recsys publish``): ``ids.npz`` and ``history.npz``. Unknown
users get index -1 (the scorer serves them the popularity fallback) and ``FALLBACK = true``. Every request of a
batch gets its own response; a bad one gets INVALID_ARG without failing the others.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_top_k = int(params.get("max_top_k", "1000"))
        self.version = int(args["model_version"])
        folder = Path(args["model_repository"]) / args["model_version"]
        with np.load(folder / "ids.npz", allow_pickle=False) as npz:
            users = npz["user_ids"]
        self.index = {str(u): i for i, u in enumerate(users.tolist())}
        with np.load(folder / "history.npz", allow_pickle=False) as npz:
            indptr = npz["indptr"].astype(np.int64)
            indices = npz["indices"].astype(np.int64)
        # Every user's heard items, padded with -1, plus an all-padding row for unknown users: a request is then
        # one fancy-index, no Python loop (width = the longest history, n_users x width int64 in memory).
        lengths = np.diff(indptr)
        self.width = max(int(lengths.max()) if len(lengths) else 1, 1)
        self.unknown = len(lengths)
        self.exclude = np.full((len(lengths) + 1, self.width), -1, dtype=np.int64)
        rows = np.repeat(np.arange(len(lengths)), lengths)
        self.exclude[rows, np.arange(len(indices)) - np.repeat(indptr[:-1], lengths)] = indices

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        user_ids = pb_utils.get_input_tensor_by_name(request, "USER_ID").as_numpy().reshape(-1)
        top_k = pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy().reshape(-1)
        bad = top_k[(top_k < 1) | (top_k > self.max_top_k)]
        if bad.size:
            return _invalid(f"TOP_K must be in 1..{self.max_top_k}, got {int(bad[0])}")
        keys = [u.decode("utf-8", "replace") if isinstance(u, bytes) else str(u) for u in user_ids.tolist()]
        if any(not key.strip() for key in keys):
            return _invalid("USER_ID must not be empty")
        index = np.array([self.index.get(key, -1) for key in keys], dtype=np.int64)
        exclude = self.exclude[np.where(index >= 0, index, self.unknown)]
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("USER_INDEX", index[:, None]),
                pb_utils.Tensor("EXCLUDE", exclude),
                pb_utils.Tensor("FALLBACK", (index < 0)[:, None]),
                pb_utils.Tensor("MODEL_VERSION", np.full((len(index), 1), self.version, dtype=np.int64)),
            ]
        )


def _invalid(message: str) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
