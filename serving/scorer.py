"""The exported scorer of a version (TorchScript or ONNX), run on one stacked batch of numpy arrays.

Both served families use it: the factor scorer takes (USER_VECTOR, EXCLUDE, TOP_K), the session scorer
(ITEM_SEQUENCE, TOP_K); both answer (SCORES, ITEMS). Only the runtime of the chosen format is imported, so an
ONNX scorer's stub never loads torch (~350 MB).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from serving.contract import ITEMS, ONNX_FILE, PAD, SCORES, TORCHSCRIPT_FILE

Format = Literal["torchscript", "onnx"]
FORMATS: tuple[Format, ...] = ("torchscript", "onnx")


class Scorer:
    """``inputs`` (tensor names, in the exported graph's order) -> (scores, item indices) ``[B, max(TOP_K)]``.

    :attr:`widths` holds the fixed second dimension of each input the export declares (ONNX does; a TorchScript
    module does not say), so a request of another width is refused before it joins a batch.
    """

    def __init__(self, folder: Path, fmt: str, inputs: Sequence[str], *, threads: int = 1) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown scorer format {fmt!r} (torchscript or onnx)")
        self.format, self.inputs = fmt, tuple(inputs)
        self.widths: dict[str, int] = {}
        if fmt == "torchscript":
            import torch

            torch.set_num_threads(threads)
            self._torch = torch
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")
                self._module = torch.jit.load(str(folder / TORCHSCRIPT_FILE), map_location="cpu").eval()  # type: ignore[no-untyped-call]
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.enable_cpu_mem_arena = False  # the arena kept batch-sized buffers for good (+300 MB at 1M items)
            self._session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
            self.widths = {
                node.name: int(node.shape[1])
                for node in self._session.get_inputs()
                if len(node.shape) == 2 and isinstance(node.shape[1], int)
            }

    def __call__(self, *arrays: npt.NDArray[np.generic]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        if len(arrays) != len(self.inputs):
            raise ValueError(f"the scorer takes {len(self.inputs)} inputs {self.inputs}, got {len(arrays)}")
        arrays = tuple(np.ascontiguousarray(a) for a in arrays)
        if self.format == "torchscript":
            torch = self._torch
            with torch.inference_mode():
                scores, items = self._module(*(torch.from_numpy(a) for a in arrays))
            return scores.numpy(), items.numpy()
        scores, items = self._session.run([SCORES, ITEMS], dict(zip(self.inputs, arrays, strict=True)))
        return scores, items


def stack_rows(parts: Sequence[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    """Concatenates [b_i, H_i] index blocks (exclusions), padding narrower ones with -1."""
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=PAD) for p in parts])
