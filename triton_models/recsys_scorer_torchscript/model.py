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


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.format = params.get("format", "torchscript")
        threads = int(params.get("threads", "2"))
        if self.format == "torchscript":
            import torch

            torch.set_num_threads(threads)
            self.torch = torch
            self.module = torch.jit.load(str(folder / "model.pt"), map_location="cpu").eval()
        elif self.format == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.enable_cpu_mem_arena = False  # the arena kept batch-sized buffers for good (+300 MB at 1M items)
            self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        else:
            raise pb_utils.TritonModelException(f"unknown scorer format {self.format!r}")

    def execute(self, requests: list[Any]) -> list[Any]:
        users, excludes, ks, sizes = [], [], [], []
        for request in requests:
            users.append(pb_utils.get_input_tensor_by_name(request, "USER_INDEX").as_numpy())
            excludes.append(pb_utils.get_input_tensor_by_name(request, "EXCLUDE").as_numpy())
            ks.append(pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy())
            sizes.append(len(users[-1]))
        width = max(e.shape[1] for e in excludes)
        exclude = np.concatenate([np.pad(e, ((0, 0), (0, width - e.shape[1])), constant_values=-1) for e in excludes])
        scores, items = self._score(np.concatenate(users), exclude, np.concatenate(ks))
        responses, start = [], 0
        for size in sizes:
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("SCORES", scores[start : start + size]),
                        pb_utils.Tensor("ITEMS", items[start : start + size]),
                    ]
                )
            )
            start += size
        return responses

    def _score(self, users: np.ndarray, exclude: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.format == "torchscript":
            with self.torch.inference_mode():
                scores, items = self.module(
                    self.torch.from_numpy(users), self.torch.from_numpy(exclude), self.torch.from_numpy(k)
                )
            return scores.numpy(), items.numpy()
        scores, items = self.session.run(["SCORES", "ITEMS"], {"USER_INDEX": users, "EXCLUDE": exclude, "TOP_K": k})
        return scores, items
