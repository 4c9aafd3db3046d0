"""Step 3 of every ensemble: trim the scorer's candidates to each request's TOP_K, map indices to external ids.

The scorer returns ``max(TOP_K)`` candidates for a whole batch with already-heard items masked; this step cuts
each request back to its own k and returns external item ids as strings ("" and -inf where a row ran out).
recsys_session_topk runs this same file with the GRU4Rec run's ``ids.npz`` (its own item index space).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from trainer.serving_steps import ItemIds


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.item_ids = ItemIds(Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        items = pb_utils.get_input_tensor_by_name(request, "ITEMS").as_numpy()
        scores = pb_utils.get_input_tensor_by_name(request, "SCORES").as_numpy()
        k = int(pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy().reshape(-1).max())
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("ITEM_IDS", self.item_ids(items[:, :k])),
                pb_utils.Tensor("SCORES", np.ascontiguousarray(scores[:, :k], dtype=np.float32)),
            ]
        )
