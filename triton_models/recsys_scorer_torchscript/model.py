"""Scorer step (local flavour): the exported model of this version, run on one stacked batch.

The same file serves both scorer models; its ``format`` parameter picks ``model.pt`` (torch.jit) or
``model.onnx`` (onnxruntime). All requests of a dynamic batch are concatenated, scored in one call and split
back, one response per request. The NGC image runs the same exports on the native backends instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from trainer.serving_steps import Scorer, stack_exclusions


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.scorer = Scorer(folder, params.get("format", "torchscript"), threads=int(params.get("threads", "1")))

    def execute(self, requests: list[Any]) -> list[Any]:
        users, excludes, ks = [], [], []
        for request in requests:
            users.append(pb_utils.get_input_tensor_by_name(request, "USER_VECTOR").as_numpy())
            excludes.append(pb_utils.get_input_tensor_by_name(request, "EXCLUDE").as_numpy())
            ks.append(pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy())
        scores, items = self.scorer(np.concatenate(users), stack_exclusions(excludes), np.concatenate(ks))
        responses, start = [], 0
        for block in users:
            stop = start + len(block)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("SCORES", scores[start:stop]),
                        pb_utils.Tensor("ITEMS", items[start:stop]),
                    ]
                )
            )
            start = stop
        return responses
