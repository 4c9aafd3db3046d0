"""Step 3 of both ensembles: trim the scorer's candidates to each request's TOP_K, map indices to external ids.

The scorer returns ``max(TOP_K)`` candidates for a whole batch with already-heard items masked; this step cuts
each request back to its own k, drops padding (-1) and returns external item ids as strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        folder = Path(args["model_repository"]) / args["model_version"]
        with np.load(folder / "ids.npz", allow_pickle=False) as npz:
            self.item_ids = npz["item_ids"].astype(str).astype(object)

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        items = pb_utils.get_input_tensor_by_name(request, "ITEMS").as_numpy()
        scores = pb_utils.get_input_tensor_by_name(request, "SCORES").as_numpy()
        k = int(pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy().reshape(-1).max())
        items, scores = items[:, :k], scores[:, :k]
        # Rows of one request share k; a row that ran out of items is padded with "" / -inf.
        valid = items >= 0
        ids = np.where(valid, self.item_ids[np.where(valid, items, 0)], "").astype(object)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("ITEM_IDS", ids.astype(np.bytes_)),
                pb_utils.Tensor("SCORES", np.where(valid, scores, -np.inf).astype(np.float32)),
            ]
        )
