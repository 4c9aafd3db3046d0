"""What every family's export shares: TorchScript and ONNX from one ``nn.Module``, both run back, and one parity rule.

A family's export module builds its scorer module and its parity inputs; this module writes the two formats,
runs them and compares them with the trainer's own answers, so both families are held to the same rule:
identical top-k ids, the same infinite entries, and finite scores within ``PARITY_TOLERANCE``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys.core.errors import ConfigError, RecsysError
from serving.contract import ITEMS, ONNX_FILE, SCORES, TOP_K, TORCHSCRIPT_FILE

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
#: Above this many bytes of weights an ONNX export keeps them in ``<model>.onnx.data`` beside the graph: protobuf
#: refuses a file over 2 GB (a 10M-item x 64-factor scorer holds 2.6 GB), and a margin keeps the graph's own bytes in.
ONNX_EXTERNAL_DATA_BYTES = 1 << 30


class ExportError(RecsysError):
    """A model cannot be exported or its exports disagree with it; nothing may be published."""


# torch marks TorchScript deprecated, but Triton's native pytorch backend serves exactly TorchScript; these
# warnings (and torch.export's internal FutureWarnings) say nothing about our exports, so they are muted here only.
_EXPORT_NOISE = (
    r"`torch\.jit\.(script|load|save)` is deprecated",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"# The axis name: .* will not be used",
)
# Loggers of the exporter that print internal graphs and optional-package notes at WARNING level.
_NOISY_LOGGERS = ("torch.onnx", "torch.fx", "torch.export", "torch._export", "torch._dynamo", "torch._subclasses")


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    names = [n for n in logging.root.manager.loggerDict if n.startswith(_NOISY_LOGGERS)]
    loggers = [logging.getLogger(name) for name in (*_NOISY_LOGGERS, *names)]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for pattern in _EXPORT_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def masked_top_k(
    scores: torch.Tensor, columns: torch.Tensor, top_k: torch.Tensor, n_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last part of every exported scorer: ``columns`` (item indices; ``n_items`` is the ``-inf`` sink that
    padding points to) masked in place, then the top ``max(top_k)`` per row; ids -1 where fewer items remain.

    Scriptable (TorchScript compiles it with the module that calls it) and exportable (``k`` stays symbolic for
    ``torch.export``, becoming an ONNX TopK input).
    """
    scores.scatter_(1, columns, -math.inf)
    k_tensor = top_k.max().clamp(min=1, max=n_items)
    if torch.jit.is_scripting():  # type: ignore[attr-defined]
        k = int(k_tensor)
    else:
        k = k_tensor.item()  # type: ignore[assignment]
        torch._check(k >= 1)  # type: ignore[no-untyped-call]
        torch._check(k <= n_items)  # type: ignore[no-untyped-call]
    values, items = torch.topk(scores, k, dim=1)
    items = torch.where(torch.isinf(values), torch.full_like(items, -1), items)
    return values, items


def export_torchscript(module: torch.nn.Module, path: Path) -> Path:
    with quiet_export():
        scripted = torch.jit.script(module)
        scripted.save(str(path))  # type: ignore[no-untyped-call]
    return path


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with quiet_export():
        module: torch.jit.ScriptModule = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    return module


def export_onnx(
    module: torch.nn.Module,
    path: Path,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    dynamic_shapes: Mapping[str, Mapping[int, Any]],
) -> Path:
    """ONNX by the dynamo exporter: dynamic dims as given; ``k`` comes from the TOP_K input (an ONNX TopK input).

    Weights over :data:`ONNX_EXTERNAL_DATA_BYTES` go to ``<path>.data`` (named relative in the graph, so the two
    files load from any folder that holds both); smaller models stay one self-contained file.
    """
    with quiet_export():
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=True,
            input_names=list(input_names),
            output_names=[SCORES, ITEMS],
            dynamic_shapes=dict(dynamic_shapes),
            verbose=False,
            external_data=weight_bytes(module) > ONNX_EXTERNAL_DATA_BYTES,
        )
    return path


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of the tensors ``module`` and its submodules hold: parameters, buffers and plain tensor attributes
    (which TorchScript and the exporter keep as constants, as :class:`trainer.export.FactorScorer` does)."""
    seen: dict[int, int] = {}
    for sub in module.modules():
        tensors = [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]
        tensors += [value for value in vars(sub).values() if isinstance(value, torch.Tensor)]
        seen |= {id(t): t.numel() * t.element_size() for t in tensors}
    return sum(seen.values())


def export_both(
    module: torch.nn.Module,
    directory: Path,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    dynamic_shapes: Mapping[str, Mapping[int, Any]],
) -> tuple[Path, Path]:
    """``model.pt`` and ``model.onnx`` of ``module`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    ts = export_torchscript(module, directory / TORCHSCRIPT_FILE)
    logger.info("exported %s to TorchScript in %.1f s", type(module).__name__, time.perf_counter() - began)
    began = time.perf_counter()
    onnx = export_onnx(module, directory / ONNX_FILE, example, input_names, dynamic_shapes)
    logger.info("exported %s to ONNX in %.1f s", type(module).__name__, time.perf_counter() - began)
    return ts, onnx


Outputs = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]


Runner = Callable[[list[npt.NDArray[Any]]], Sequence[npt.NDArray[Any]]]


def torchscript_runner(path: Path) -> Runner:
    scripted = load_torchscript(path)

    def run(arrays: list[npt.NDArray[Any]]) -> Sequence[npt.NDArray[Any]]:
        with torch.inference_mode():
            return [t.numpy() for t in scripted(*(torch.from_numpy(a) for a in arrays))]

    return run


def onnx_runner(path: Path, names: Sequence[str]) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # No pre-packed copy of the weights: packing held a second copy while loading (5.2 GB at 10M items, not 2.6)
    # and bought nothing for a check of a few hundred rows.
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(arrays: list[npt.NDArray[Any]]) -> Sequence[npt.NDArray[Any]]:
        return session.run([SCORES, ITEMS], dict(zip(names, arrays, strict=True)))  # type: ignore[no-any-return]

    return run


def run_exports(
    torchscript: Path, onnx: Path, inputs: Mapping[str, npt.NDArray[Any]], *, rows: int | None = None
) -> dict[str, Outputs]:
    """Both exports on the same inputs (tensor name -> array, in the graph's order): format -> (scores, items).

    ``rows``: at most that many input rows per call (a factor scorer's scores are ``rows x n_items`` floats: 8 GB
    for 200 users at 10M items); every row must ask the same top-k, so the calls' answers stack. One export is
    loaded at a time and released before the next, so a large model is held once, not twice. ConfigError, before
    either export loads, when rows in different calls ask different top-k.
    """
    arrays = [np.ascontiguousarray(a) for a in inputs.values()]
    n = len(arrays[0]) if arrays else 0
    step = max(1, n if rows is None else rows)
    chunks = [[a[start : start + step] for a in arrays] for start in range(0, max(n, 1), step)]
    asked = np.unique(inputs[TOP_K]) if TOP_K in inputs else np.empty(0)
    if len(chunks) > 1 and len(asked) > 1:
        # a call answers max(TOP_K) items per row: calls of other ks give answers of other widths, which do not stack
        raise ConfigError(
            f"run_exports in calls of {step} rows needs one top-k for every row, got {len(asked)} different "
            f"({', '.join(str(k) for k in asked[:5].tolist())}{', ...' if len(asked) > 5 else ''})"
        )
    loaders: dict[str, Callable[[], Runner]] = {
        "torchscript": lambda: torchscript_runner(torchscript),
        "onnx": lambda: onnx_runner(onnx, list(inputs)),
    }
    answers: dict[str, Outputs] = {}
    for fmt, load in loaders.items():
        began = time.perf_counter()
        run = load()
        parts = [run(chunk) for chunk in chunks]
        del run  # the loaded export goes before the next one loads
        logger.info("ran the %s export on %d rows in %.1f s", fmt, n, time.perf_counter() - began)
        answers[fmt] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return answers


@dataclass(frozen=True)
class ParityReport:
    users_checked: int
    max_abs_score_diff: dict[str, float]
    ids_identical: dict[str, bool]

    @property
    def ok(self) -> bool:
        return all(self.ids_identical.values()) and all(v <= PARITY_TOLERANCE for v in self.max_abs_score_diff.values())

    def describe(self) -> str:
        return ", ".join(
            f"{fmt}: max |score diff| {self.max_abs_score_diff[fmt]:.2e}, ids identical {self.ids_identical[fmt]}"
            for fmt in self.ids_identical
        )


def compare(
    reference: Outputs,
    candidates: Mapping[str, Outputs],
    *,
    score_of: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]] | None = None,
) -> ParityReport:
    """Each candidate against the reference (scores, items): a differing set of infinite entries counts as an
    infinite score difference.

    Ids must be identical, except between items the reference itself scores equally (tied items may come in any
    order, and either may fill the last slot): with ``score_of`` (the reference's own scores of given item ids,
    row by row), a candidate's id that differs passes when the reference scores it like the item it displaced.
    An id mapping bug still fails, since the reference scores the wrongly mapped item differently.
    """
    ref_scores, ref_items = reference
    finite = np.isfinite(ref_scores)
    diffs, same = {}, {}
    for name, (scores, items) in candidates.items():
        agree = scores.shape == ref_scores.shape and np.array_equal(np.isfinite(scores), finite)
        if not agree:
            diffs[name] = math.inf
        else:
            diffs[name] = float(np.abs(scores[finite] - ref_scores[finite]).max()) if finite.any() else 0.0
        identical = items.shape == ref_items.shape and bool(np.array_equal(items, ref_items))
        if not identical and score_of is not None and items.shape == ref_items.shape:
            differ = items != ref_items
            tied = np.abs(score_of(items) - ref_scores) <= PARITY_TOLERANCE
            identical = bool(np.all(~differ | (tied & (items >= 0))))
        same[name] = identical
    return ParityReport(users_checked=len(ref_scores), max_abs_score_diff=diffs, ids_identical=same)


def ensure_parity(report: ParityReport, what: str) -> ParityReport:
    if not report.ok:
        raise ExportError(f"{what} export parity failed: {report.describe()}")
    logger.info("%s parity ok on %d rows: %s", what, report.users_checked, report.max_abs_score_diff)
    return report
