"""Step 2 of ``recsys_c`` (local flavour): the exported GRU4Rec scorer of this version on one stacked batch.

``ITEM_SEQUENCE`` [B, L] -> GRU over the plays -> scores against every item, the plays themselves masked, an
empty row served the popularity fallback -> top max(TOP_K) (``SCORES``, ``ITEMS``). The ``format`` parameter picks
``model.onnx`` (onnxruntime, the local default: faster on one thread) or ``model.pt`` (torch.jit); both are in
every version and parity-checked at publish. All requests of a dynamic batch are scored in one call and split
back, one response per request. The NGC image runs ``model.onnx`` on the onnxruntime backend instead.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils

from trainer.run_files import ONNX_FILE, TORCHSCRIPT_FILE


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.format = params.get("format", "onnx")
        threads = int(params.get("threads", "1"))
        # Only the runtime of this format is imported: an ONNX scorer process never loads torch (~350 MB).
        if self.format == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.enable_cpu_mem_arena = False
            self.session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        elif self.format == "torchscript":
            import torch

            torch.set_num_threads(threads)
            self.torch = torch
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")
                self.module = torch.jit.load(str(folder / TORCHSCRIPT_FILE), map_location="cpu").eval()  # type: ignore[no-untyped-call]
        else:
            raise ValueError(f"unknown scorer format {self.format!r} (onnx or torchscript)")

    def _score(
        self, sequences: npt.NDArray[np.int64], top_k: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        if self.format == "onnx":
            scores, items = self.session.run(["SCORES", "ITEMS"], {"ITEM_SEQUENCE": sequences, "TOP_K": top_k})
            return scores, items
        torch = self.torch
        with torch.inference_mode():
            scores, items = self.module(torch.from_numpy(sequences), torch.from_numpy(top_k))
        return scores.numpy(), items.numpy()

    def execute(self, requests: list[Any]) -> list[Any]:
        sequences, ks = [], []
        for request in requests:
            sequences.append(pb_utils.get_input_tensor_by_name(request, "ITEM_SEQUENCE").as_numpy())
            ks.append(pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy())
        scores, items = self._score(
            np.ascontiguousarray(np.concatenate(sequences), dtype=np.int64),
            np.ascontiguousarray(np.concatenate(ks), dtype=np.int64),
        )
        responses, start = [], 0
        for block in sequences:
            stop = start + len(block)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("SCORES", np.ascontiguousarray(scores[start:stop])),
                        pb_utils.Tensor("ITEMS", np.ascontiguousarray(items[start:stop])),
                    ]
                )
            )
            start = stop
        return responses
