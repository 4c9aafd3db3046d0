"""A python-backend scorer for the GPU benchmark (``benchmarks/gpu_triton.py`` copies it in as ``model.py``).

Same interface as the project's scorer step (``USER_INDEX`` int64 [1], ``EXCLUDE`` int64 [-1] padded with -1,
``TOP_K`` int64 [1] -> ``SCORES`` fp32 [-1], ``ITEMS`` int64 [-1]) and the same maths (user . items, unknown
users get the fallback row, excluded items masked, top-k), but written for a GPU:

* the item and user factors live on the model instance's device for its whole life, in ``dtype`` (fp16 by
  default: half the bytes to read per scoring pass);
* a dynamic batch is stacked on the host, moved with one copy per input, scored in one matmul + one top-k;
* ``output_mode=dlpack`` hands each response slices of the device results through DLPack (no host copy in
  the stub; Triton copies them out for gRPC); ``output_mode=host`` copies the whole batch's results to the host
  once and answers with numpy slices (fewer, larger copies). Both are measured.

Parameters (config.pbtxt): ``data_dir`` (holds items.npy, users.npy, fallback.npy), ``dtype`` (fp16|fp32),
``output_mode`` (dlpack|host).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import to_dlpack  # type: ignore[attr-defined]  # not in its __all__, but public API


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        kind = args.get("model_instance_kind", "CPU")
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        self.device = torch.device(f"cuda:{device_id}" if kind == "GPU" and torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        else:
            torch.set_num_threads(int(params.get("cpu_threads", "1")))
        dtype = {"fp16": torch.float16, "fp32": torch.float32}[params.get("dtype", "fp16")]
        if self.device.type == "cpu" and dtype == torch.float16:
            dtype = torch.float32  # CPU half matmul is slow and not what the CPU path would use
        self.output_mode = params.get("output_mode", "dlpack")
        data = Path(params["data_dir"])
        items = torch.from_numpy(np.load(data / "items.npy"))
        self.n_items = int(items.shape[0])
        # One extra all-zero item: excluded positions and padding (-1) are scattered into it, so masking needs no
        # boolean indexing (which would wait for the device) and no copy of the score matrix.
        padded = torch.cat([items, torch.zeros(1, items.shape[1], dtype=items.dtype)])
        self.items = padded.to(self.device, dtype).contiguous()
        self.users = torch.from_numpy(np.load(data / "users.npy")).to(self.device, dtype).contiguous()
        fallback = torch.from_numpy(np.load(data / "fallback.npy")).float()
        self.fallback = torch.cat([fallback, torch.full((1,), -torch.inf)]).to(self.device, dtype)
        # One warm-up pass, so the first request does not pay for cuBLAS handles and kernels.
        self._score(np.zeros((1, 1), np.int64), np.full((1, 1), -1, np.int64), 10)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _score(self, users: npt.NDArray[Any], exclude: npt.NDArray[Any], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``k`` per row; everything after the two host-to-device copies stays on the device, unsynchronised."""
        users = users.reshape(-1)
        unknown = bool((users < 0).any())  # decided on the host: no device round trip
        columns_np = np.where(exclude >= 0, exclude, self.n_items)
        with torch.inference_mode():
            index = torch.from_numpy(users).to(self.device, non_blocking=True)
            columns = torch.from_numpy(columns_np).to(self.device, non_blocking=True)
            scores = self.users[index.clamp(min=0)] @ self.items.T  # (B, n_items + 1), the last column a dump
            if unknown:
                scores = torch.where((index >= 0)[:, None], scores, self.fallback[None, :])
            scores.scatter_(1, columns, -torch.inf)
            scores[:, self.n_items] = -torch.inf
            values, items = torch.topk(scores, min(max(k, 1), self.n_items), dim=1)
            items = torch.where(torch.isinf(values), torch.full_like(items, -1), items)
            return values.float(), items

    def execute(self, requests: list[Any]) -> list[Any]:
        users, excludes, ks, sizes = [], [], [], []
        for request in requests:
            users.append(pb_utils.get_input_tensor_by_name(request, "USER_INDEX").as_numpy())
            excludes.append(pb_utils.get_input_tensor_by_name(request, "EXCLUDE").as_numpy())
            ks.append(int(pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy().max()))
            sizes.append(len(users[-1]))
        width = max(e.shape[1] for e in excludes)
        exclude = np.concatenate([np.pad(e, ((0, 0), (0, width - e.shape[1])), constant_values=-1) for e in excludes])
        values, items = self._score(np.concatenate(users), exclude, max(ks))
        responses, start = [], 0
        if self.output_mode == "host":
            values_np, items_np = values.cpu().numpy(), items.cpu().numpy()
            for size in sizes:
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("SCORES", values_np[start : start + size]),
                            pb_utils.Tensor("ITEMS", items_np[start : start + size]),
                        ]
                    )
                )
                start += size
            return responses
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # Triton reads these buffers on its own stream
        for size in sizes:
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor.from_dlpack("SCORES", to_dlpack(values[start : start + size])),
                        pb_utils.Tensor.from_dlpack("ITEMS", to_dlpack(items[start : start + size])),
                    ]
                )
            )
            start += size
        return responses
