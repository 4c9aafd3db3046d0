"""The factor scorer on a device: the item matrix lives on the GPU, one fp16 pass picks candidates, fp32 ranks them.

A ``KIND_GPU`` instance of ``recsys_scorer_torchscript``, ``recsys_scorer_onnx`` or ``recsys_fused`` runs this
instead of :class:`serving.scorer.Scorer` (``serving.models`` chooses; CPU instances are unchanged). It answers
exactly what the exported graph answers (``trainer.export.FactorScorer``: ``USER_VECTOR . items + bias``, EXCLUDE
and the sink masked, top-k, ``-1`` where a row runs out of items), from the same published files:

* ``format=torchscript`` reads ``model.pt``'s tensor attributes ``items_t`` ``[D + 1, n + 1]``, ``bias``
  ``[n + 1]`` and ``n_items``; ``format=onnx`` reads the initializers of the same names from ``model.onnx``
  (external data included). Both are the same trained weights, so recsys_a and recsys_b stay comparable.
* Why two passes: a scoring pass reads the whole item matrix once per batch and is bound by memory bandwidth, so
  the matrix is held in fp16 (half the bytes). fp16 alone would change ids and scores (and overflow on large
  popularity counts in the fallback column), so the fp16 pass only picks ``k + margin`` candidates per row, from
  a scaled copy that cannot overflow: every column divided by its largest magnitude, every user row by the bound
  ``g = sum_j |u_j| c_j`` of its own scores, so each scaled score lies in [-1, 1]. The candidates are then scored
  again in fp32 from an fp32 copy, and ranked: the returned scores are fp32 scores.
* Why that is exact: each scaled fp16 score is within ``eps`` (:func:`candidate_error`, 2.9e-3 for fp16)
  of the true scaled score. If the k-th fp32 score of a row, scaled, is above the last candidate's fp16 score +
  ``eps``, no item outside the candidates can beat it, so the row's ids are the fp32 ranking's. Rows where that
  cannot be shown (near-ties at the candidate cut, or ``margin`` too small) are scored again in full fp32 on the
  device. The answer is therefore the fp32 answer, not an approximation; ``precision=fp32`` skips fp16 altogether.

Inputs arrive in host memory (the lookup before this step is a CPU model) and move in one host-to-device copy per
input and batch; top-k runs on the device, and the whole batch's (scores, ids) come back in one copy. Why not
per-response DLPack device tensors: the next step (recsys_topk) runs on the CPU, so Triton would copy each
response out on its own; the earlier stand-alone GPU scorer measured that slower (11.5k against 14.4k infer/s at
concurrency 256, ``benchmarks/results/gpu_triton.md``). Only torch and numpy are imported (never ``trainer``,
nor ``onnx``: :func:`onnx_initializers`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from serving.contract import ONNX_FILE, TORCHSCRIPT_FILE

log = logging.getLogger(__name__)

Precision = Literal["fp16", "fp32"]
#: Candidates scored again in fp32 beyond each row's k. The exactness check does not depend on it; it only sets
#: how often a row needs the full fp32 pass (near-ties within ~3e-3 of the bound at the cut).
MARGIN = 64
#: Inner dimension padded to a multiple of this (tensor-core friendly shapes).
ALIGN = 8
_UNIT_ROUNDOFF = {"fp16": 2.0**-11, "fp32": 2.0**-24}


def candidate_error(precision: Precision, width: int) -> float:
    """Bound on |scaled score of the candidate pass - true scaled score| (scaled scores lie in [-1, 1]).

    Rounding the scaled user row and item row to ``precision`` moves each product by at most 2u of its size, the
    accumulation in fp32 and the rounding of the output add at most ``width`` fp32 ulps and one ``precision`` ulp,
    and the subnormal range of fp16 adds at most ``width`` units of 2^-25 on each side; doubled for safety margin.
    """
    u = _UNIT_ROUNDOFF[precision]
    return 2.0 * (3.0 * u + (width + 2) * 2.0**-24 + width * 2.0**-24)


def load_weights(folder: Path, fmt: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(items_t [D + 1, n + 1], bias [n + 1], n_items)`` in fp32 from the version's export of ``fmt``."""
    if fmt == "torchscript":
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")
            module = torch.jit.load(str(folder / TORCHSCRIPT_FILE), map_location="cpu")  # type: ignore[no-untyped-call]
        return module.items_t.float(), module.bias.float(), int(module.n_items)
    if fmt == "onnx":
        found = onnx_initializers(folder / ONNX_FILE, ("items_t", "bias"))
        items_t, bias = torch.from_numpy(found["items_t"]), torch.from_numpy(found["bias"])
        return items_t, bias, int(items_t.shape[1]) - 1
    raise ValueError(f"unknown scorer format {fmt!r} (torchscript or onnx)")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of one protobuf message: varints as ints, length-delimited fields as views."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            yield number, data[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


_ONNX_FLOAT, _ONNX_EXTERNAL = 1, 1


def onnx_initializers(path: Path, names: tuple[str, ...]) -> dict[str, npt.NDArray[np.float32]]:
    """The float initializers ``names`` of an ONNX file, external data included, without the ``onnx`` package.

    Why by hand: the python-backend stubs run numpy < 2 beside packages built for numpy 2 on the GPU image, and only
    two tensors are needed. ModelProto.graph (7) -> GraphProto.initializer (5) -> TensorProto: dims (1),
    data_type (2), float_data (4), name (8), raw_data (9), external_data (13: key 1, value 2), data_location (14).
    External data (a graph over protobuf's 2 GB) is read straight from its file.
    """
    with path.open("rb") as handle:
        model = memoryview(handle.read())
    out: dict[str, npt.NDArray[np.float32]] = {}
    for number, graph in _fields(model):
        if number != 7 or not isinstance(graph, memoryview):
            continue
        for field, tensor in _fields(graph):
            if field != 5 or not isinstance(tensor, memoryview):
                continue
            parts: dict[int, list[int | memoryview]] = {}
            for key, value in _fields(tensor):
                parts.setdefault(key, []).append(value)
            label = parts.get(8, [memoryview(b"")])[0]
            name = bytes(label).decode() if isinstance(label, memoryview) else ""
            if name not in names:
                continue
            dims: list[int] = []
            for value in parts.get(1, []):  # packed (one view) or one varint per dim
                if isinstance(value, int):
                    dims.append(value)
                else:
                    at = 0
                    while at < len(value):
                        dim, at = _varint(value, at)
                        dims.append(dim)
            if parts.get(2, [_ONNX_FLOAT])[0] != _ONNX_FLOAT:
                raise ValueError(f"{path}: initializer {name} is not float32")
            count = int(np.prod(dims))
            if parts.get(14, [0])[0] == _ONNX_EXTERNAL:
                where = {}
                for entry in parts.get(13, []):
                    pair = {k: bytes(v).decode() for k, v in _fields(entry) if isinstance(v, memoryview)}  # type: ignore[arg-type]
                    where[pair.get(1, "")] = pair.get(2, "")
                offset = int(where.get("offset", "0") or 0)
                array = np.fromfile(path.parent / where["location"], np.float32, count, offset=offset)
            else:
                raw = parts.get(9) or parts.get(4)
                if not raw or not isinstance(raw[0], memoryview):
                    raise ValueError(f"{path}: initializer {name} has no data")
                array = np.frombuffer(raw[0], np.float32, count).copy()
            if array.size != count:
                raise ValueError(f"{path}: initializer {name} has {array.size} values for dims {dims}")
            out[name] = array.reshape(dims)
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(f"{path} has no initializer {', '.join(missing)}")
    return out


class DeviceScorer:
    """(USER_VECTOR [B, D + 1], EXCLUDE [B, H], TOP_K [B, 1]) numpy -> (scores, ids) ``[B, max(TOP_K)]`` numpy.

    Holds on ``device``: the fp32 rows ``[n + 1, Dp]`` (factors, fallback column, bias column, zero padding; the
    last row is the sink that padding in EXCLUDE points to) and, with ``precision=fp16``, their column-scaled fp16
    copy. ``stats`` counts batches, rows and the rows that needed the full fp32 pass.
    """

    def __init__(
        self,
        items_t: torch.Tensor,
        bias: torch.Tensor,
        n_items: int,
        device: str | torch.device,
        *,
        precision: Precision = "fp16",
        margin: int = MARGIN,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # fp32 accumulation in the fp16 product and true fp32 (no TF32) in the exact one: candidate_error
            # assumes both.
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
            torch.backends.cuda.matmul.allow_tf32 = False
        if precision not in _UNIT_ROUNDOFF:
            raise ValueError(f"precision must be fp16 or fp32, got {precision!r}")
        self.precision: Precision = precision
        self.n_items = int(n_items)
        self.margin = int(margin)
        dim = int(items_t.shape[0])  # D + 1 (factors and the fallback column)
        self.user_width = dim
        self.width = -(-(dim + 1) // ALIGN) * ALIGN
        rows = torch.zeros(self.n_items + 1, self.width, dtype=torch.float32)
        rows[:, :dim] = items_t.T
        rows[: self.n_items, dim] = bias[: self.n_items]  # the sink's -inf bias is the column fill in _candidates
        rows[self.n_items] = 0.0
        scale = rows[: self.n_items].abs().amax(dim=0)
        self.scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(self.device)
        self.rows = rows.to(self.device)
        self.eps = candidate_error(precision, self.width)
        self.scaled: torch.Tensor | None = None
        if precision == "fp16":
            self.scaled = (self.rows / self.scale).to(torch.float16).contiguous()
        self.stats = {"batches": 0, "rows": 0, "full_rows": 0}
        # Warm-up: cuBLAS handles and the kernels of both passes exist before the first request.
        self(
            np.zeros((2, dim), np.float32),
            np.full((2, 1), -1, np.int64),
            np.full((2, 1), min(10, self.n_items), np.int64),
        )
        self.stats = {"batches": 0, "rows": 0, "full_rows": 0}

    @classmethod
    def load(cls, folder: Path, fmt: str, device: str | torch.device, *, precision: Precision = "fp16") -> DeviceScorer:
        """The scorer of the published version in ``folder`` (see :func:`load_weights`)."""
        items_t, bias, n_items = load_weights(folder, fmt)
        if torch.device(device).type == "cpu" and precision == "fp16":
            log.info("fp16 candidates on a CPU device are slow; fp32 instead")
            precision = "fp32"
        return cls(items_t, bias, n_items, device, precision=precision)

    @property
    def device_bytes(self) -> int:
        """Bytes of item data held on the device (what one scoring pass may read)."""
        held = self.rows.numel() * self.rows.element_size()
        return held + (0 if self.scaled is None else self.scaled.numel() * self.scaled.element_size())

    def __call__(self, *arrays: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Same call as :class:`serving.scorer.Scorer`: (USER_VECTOR, EXCLUDE, TOP_K) stacked for a batch."""
        user_vector, exclude, top_k = arrays
        k = max(1, min(int(top_k.max()), self.n_items))
        with torch.inference_mode():
            users = torch.from_numpy(np.ascontiguousarray(user_vector, dtype=np.float32)).to(self.device)
            columns = torch.from_numpy(np.ascontiguousarray(exclude, dtype=np.int64)).to(self.device)
            values, items = self.scores(users, columns, k)
            return values.cpu().numpy(), items.cpu().numpy()

    def _augmented(self, users: torch.Tensor) -> torch.Tensor:
        """User rows padded to the item rows' layout, with 1 in the bias column."""
        full = torch.zeros(users.shape[0], self.width, dtype=torch.float32, device=self.device)
        full[:, : self.user_width] = users
        full[:, self.user_width] = 1.0
        return full

    def _masked(self, scores: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
        scores[:, self.n_items] = -math.inf  # the sink column
        columns = torch.where(exclude >= 0, exclude, torch.full_like(exclude, self.n_items))
        return scores.scatter_(1, columns, -math.inf)

    def _exact(self, users: torch.Tensor, exclude: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self._masked(users @ self.rows.T, exclude)
        values, items = torch.topk(scores, k, dim=1)
        return values, torch.where(torch.isinf(values), torch.full_like(items, -1), items)

    def scores(self, users: torch.Tensor, exclude: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Device tensors in, device tensors out: (scores fp32, ids int64) ``[B, k]``, ids -1 past the end."""
        self.stats["batches"] += 1
        self.stats["rows"] += int(users.shape[0])
        full = self._augmented(users)
        wanted = min(k + self.margin, self.n_items + 1)
        if self.scaled is None or wanted >= self.n_items + 1:
            return self._exact(full, exclude, k)
        weighted = full * self.scale
        bound = weighted.abs().sum(dim=1)  # >= the bias column's scale > 0: never zero
        low = (weighted / bound[:, None]).to(self.scaled.dtype)
        rough = self._masked(low @ self.scaled.T, exclude)
        cut, candidates = torch.topk(rough, wanted, dim=1)  # sorted: cut[:, -1] is the last candidate's score
        exact = torch.bmm(self.rows[candidates], full[:, :, None]).squeeze(2)
        exact = torch.where(torch.isneginf(cut), torch.full_like(exact, -math.inf), exact)
        values, order = torch.topk(exact, k, dim=1)
        items = candidates.gather(1, order)
        items = torch.where(torch.isinf(values), torch.full_like(items, -1), items)
        last = cut[:, -1].float()
        proven = torch.isneginf(last) | (values[:, -1] / bound > last + self.eps)
        if not bool(proven.all()):
            redo = torch.nonzero(~proven).squeeze(1)
            self.stats["full_rows"] += int(redo.numel())
            values[redo], items[redo] = self._exact(full[redo], exclude[redo], k)
        return values, items
