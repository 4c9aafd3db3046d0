"""The whole request path in one python model (lookup -> ONNX scorer -> top-k), for comparison with the ensembles.

Same code and same published files as the three ensemble steps (``trainer.serving_steps``), but one hop instead
of three and one scorer call for the whole dynamic batch; bad requests get INVALID_ARG on their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from trainer.serving_steps import ItemIds, Scorer, UserLookup, check_request, decode_user_ids


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.max_top_k = int(params.get("max_top_k", "1000"))
        self.version = int(args["model_version"])
        self.lookup = UserLookup(folder)
        self.item_ids = ItemIds(folder)
        self.scorer = Scorer(folder, params.get("format", "onnx"), threads=int(params.get("threads", "1")))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        good, keys_all, ks = [], [], []
        for n, request in enumerate(requests):
            keys = decode_user_ids(pb_utils.get_input_tensor_by_name(request, "USER_ID").as_numpy())
            top_k = pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy().reshape(-1, 1)
            problem = check_request(keys, top_k, self.max_top_k)
            if problem is not None:
                error = pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG)
                responses[n] = pb_utils.InferenceResponse(error=error)
                continue
            good.append((n, len(keys)))
            keys_all += keys
            ks.append(top_k)
        if good:
            vectors, exclude, unknown = self.lookup(keys_all)
            top_k = np.concatenate(ks).astype(np.int64)
            scores, items = self.scorer(vectors, exclude, top_k)
            start = 0
            for n, size in good:
                stop = start + size
                k = int(top_k[start:stop].max())
                responses[n] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("ITEM_IDS", self.item_ids(items[start:stop, :k])),
                        pb_utils.Tensor("SCORES", np.ascontiguousarray(scores[start:stop, :k])),
                        pb_utils.Tensor("FALLBACK", unknown[start:stop, None]),
                        pb_utils.Tensor("MODEL_VERSION", np.full((size, 1), self.version, dtype=np.int64)),
                    ]
                )
                start = stop
        return responses
