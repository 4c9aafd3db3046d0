"""Export a factor model's scorer to TorchScript and ONNX, and prove both agree with the trainer.

The exported graph is the scoring step of the served pipeline: user index -> scores against every item ->
already-heard items masked -> top-k. Unknown users (index -1) get the popularity fallback scores from the
same graph. Both formats are traced from one ``nn.Module`` holding the trained weights, so they cannot drift
apart; :func:`check_parity` verifies it on a sample of users before anything is published.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from recsys.core.errors import ConfigError, RecsysError
from serving.contract import EXCLUDE as EXCLUDE  # re-exported: export.X names the scorer's tensors
from serving.contract import FOLD_IN_FILE, ONNX_FILE, TORCHSCRIPT_FILE, USERS_FILE
from serving.contract import ITEMS as ITEMS
from serving.contract import SCORES as SCORES
from serving.contract import TOP_K as TOP_K
from serving.contract import USER_VECTOR as USER_VECTOR
from serving.lookup import padded_rows
from trainer.models.base import FactorModel

logger = logging.getLogger(__name__)

# Tensor names shared with triton_models/*/config.pbtxt (a test checks they match).


class ExportError(RecsysError):
    """A model cannot be exported or its exports disagree with it; nothing may be published."""


class FactorScorer(torch.nn.Module):
    """``scores = user_vector . V^T + b``, masked, then top-k: one matrix product and one top-k pass per batch.

    The user side is an input, not a table inside the module: the lookup step sends each user's row of
    :func:`user_table` (a trained vector, a vector folded in live from the listener's latest plays, or the fallback
    pseudo-user), so a new listener needs no new export. Layout:

    * the factor dimension has one extra column: the items hold ``fallback - bias`` there, users hold 0, and the
      pseudo-user for unknown ids is ``(0, ..., 0, 1)``, so its scores are the fallback scores with no ``where``;
    * column ``n_items`` is a sink whose bias is ``-inf``: padding in EXCLUDE points there, so the mask is an
      in-place scatter on the product itself (no concatenated copy), and the sink is never recommended.
    """

    def __init__(
        self,
        item_factors: torch.Tensor,
        item_bias: torch.Tensor | None,
        fallback_scores: torch.Tensor,
    ) -> None:
        super().__init__()
        n_items, dim = item_factors.shape
        bias = torch.zeros(n_items) if item_bias is None else item_bias.detach().float().cpu()
        items = torch.zeros(n_items + 1, dim + 1)
        items[:n_items, :dim] = item_factors.detach().float().cpu()
        items[:n_items, dim] = fallback_scores.detach().float().cpu() - bias
        # Plain tensor attributes (not buffers): TorchScript keeps them, and their types stay visible to mypy.
        self.items_t = items.T.contiguous()
        self.bias = torch.cat([bias, torch.tensor([-math.inf])]).contiguous()
        self.n_items = int(n_items)

    def forward(
        self, user_vector: torch.Tensor, exclude: torch.Tensor, top_k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.addmm(self.bias, user_vector, self.items_t)
        columns = torch.where(exclude >= 0, exclude, torch.full_like(exclude, self.n_items))
        scores.scatter_(1, columns, -math.inf)
        k_tensor = top_k.max().clamp(min=1, max=self.n_items)
        if torch.jit.is_scripting():  # type: ignore[attr-defined]
            k = int(k_tensor)
        else:
            # torch.export: k stays symbolic (an ONNX TopK input), with its valid range stated.
            k = k_tensor.item()  # type: ignore[assignment]
            torch._check(k >= 1)  # type: ignore[no-untyped-call]
            torch._check(k <= self.n_items)  # type: ignore[no-untyped-call]
        values, items = torch.topk(scores, k, dim=1)
        items = torch.where(torch.isinf(values), torch.full_like(items, -1), items)
        return values, items


def user_table(model: FactorModel) -> npt.NDArray[np.float32]:
    """The rows the lookup serves: ``[n_users + 1, D + 1]``, each user's factors then 0; the last row is the
    fallback pseudo-user ``(0, ..., 0, 1)`` (see :class:`FactorScorer`)."""
    users = model.factors()[0]
    table = np.zeros((users.shape[0] + 1, users.shape[1] + 1), dtype=np.float32)
    table[:-1, :-1] = users
    table[-1, -1] = 1.0
    return table


def fold_in_arrays(model: FactorModel) -> dict[str, npt.NDArray[Any]] | None:
    """What the lookup needs to fold a listener in live (the ALS closed-form user step), or ``None`` when the
    model has no closed-form fold-in (BPR)."""
    params = getattr(model, "params", None)
    if model.name != "als" or params is None:
        return None
    corpus = getattr(model, "corpus", None)
    items = model.factors()[1].astype(np.float64)
    arrays: dict[str, npt.NDArray[Any]] = {
        "item_factors": items.astype(np.float32),
        "gram": items.T @ items + params.regularization * np.eye(items.shape[1]),
        "alpha": np.array(params.alpha, dtype=np.float64),
        "weighting": np.array(str(params.weighting)),
        "bm25_k1": np.array(params.bm25_k1, dtype=np.float64),
        "bm25_b": np.array(params.bm25_b, dtype=np.float64),
    }
    if corpus is not None:
        arrays["item_idf"] = corpus.item_idf.astype(np.float64)
        arrays["mean_user_total"] = np.array(corpus.mean_user_total, dtype=np.float64)
    return arrays


def build_scorer(model: FactorModel, fallback_scores: npt.NDArray[np.floating[Any]]) -> FactorScorer:
    """The scorer of a fitted model; refuses NaN/inf weights and says which array holds them."""
    users, items, bias = model.factors()
    arrays = {"user_factors": users, "item_factors": items, "fallback_scores": np.asarray(fallback_scores)}
    if bias is not None:
        arrays["item_bias"] = bias
    for name, array in arrays.items():
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise ExportError(f"{model.name} {name} has {bad} NaN/inf value(s); refusing to export")
    if len(fallback_scores) != items.shape[0]:
        raise ExportError(f"fallback has {len(fallback_scores)} scores for {items.shape[0]} items")
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ExportError(
            f"{model.name} user_factors {users.shape} and item_factors {items.shape} do not share a factor dimension"
        )
    if items.shape[0] != model.n_items or users.shape[0] != model.n_users:
        raise ExportError(
            f"{model.name} has {model.n_users} users x {model.n_items} items but user_factors {users.shape} and "
            f"item_factors {items.shape}"
        )
    if bias is not None and bias.shape != (items.shape[0],):
        raise ExportError(f"{model.name} item_bias {bias.shape} does not match item_factors {items.shape}")
    return FactorScorer(  # buffers only, no training-mode behaviour; eval() keeps the exporters quiet
        torch.from_numpy(items),
        None if bias is None else torch.from_numpy(bias),
        torch.from_numpy(np.asarray(fallback_scores, dtype=np.float32)),
    ).eval()


def padded_exclusions(history: sp.csr_matrix, users: npt.NDArray[np.integer[Any]], width: int) -> npt.NDArray[np.int64]:
    """Rows of ``history`` as item indices padded with -1 to ``width`` (unknown users, -1, get none).

    The same padding the served lookup step applies (``serving.lookup.padded_rows``).
    """
    try:
        return padded_rows(history.indptr, history.indices, users, width)
    except ValueError as exc:
        raise ConfigError(f"exclusion list too wide: {exc}") from exc


def example_inputs(width: int, dim: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.zeros(batch, dim + 1, dtype=torch.float32),
        torch.full((batch, max(width, 1)), -1, dtype=torch.int64),
        torch.full((batch, 1), 10, dtype=torch.int64),
    )


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
def _quiet_export() -> Iterator[None]:
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


def export_torchscript(scorer: FactorScorer, path: Path) -> Path:
    with _quiet_export():
        scripted = torch.jit.script(scorer)
        scripted.save(str(path))  # type: ignore[no-untyped-call]
    return path


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with _quiet_export():
        module: torch.jit.ScriptModule = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    return module


def export_onnx(scorer: FactorScorer, path: Path, width: int) -> Path:
    """ONNX with dynamic batch and k (``k`` comes from the TOP_K input, so it becomes an ONNX TopK input)."""
    with _quiet_export():
        _onnx_export(scorer, path, width)
    return path


def _onnx_export(scorer: FactorScorer, path: Path, width: int) -> None:
    batch = torch.export.Dim("batch", min=1)
    history = torch.export.Dim("history", min=1)
    torch.onnx.export(
        scorer,
        example_inputs(width, scorer.items_t.shape[0] - 1),
        str(path),
        dynamo=True,
        input_names=[USER_VECTOR, EXCLUDE, TOP_K],
        output_names=[SCORES, ITEMS],
        dynamic_shapes={"user_vector": {0: batch}, "exclude": {0: batch, 1: history}, "top_k": {0: batch}},
        verbose=False,
        external_data=False,
    )


@dataclass(frozen=True)
class ParityReport:
    users_checked: int
    max_abs_score_diff: dict[str, float]
    ids_identical: dict[str, bool]

    @property
    def ok(self) -> bool:
        return all(self.ids_identical.values()) and all(v <= 1e-5 for v in self.max_abs_score_diff.values())


def check_parity(
    model: FactorModel,
    history: sp.csr_matrix,
    torchscript_path: Path,
    onnx_path: Path,
    width: int,
    *,
    k: int = 10,
    sample: int = 200,
    seed: int = 0,
) -> ParityReport:
    """Both exports against the trainer's own ``recommend`` on ``sample`` users: scores within 1e-5, same ids."""
    import onnxruntime as ort

    k = min(k, model.n_items)
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(model.n_users, size=min(sample, model.n_users), replace=False))
    ref_items, ref_scores = model.recommend(users, k, exclude=history)
    inputs = (
        user_table(model)[users],
        padded_exclusions(history, users, width),
        np.full((len(users), 1), k, dtype=np.int64),
    )
    scripted = load_torchscript(torchscript_path)
    with torch.inference_mode():
        ts_scores, ts_items = (t.numpy() for t in scripted(*(torch.from_numpy(a) for a in inputs)))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_scores, onnx_items = session.run(
        [SCORES, ITEMS], dict(zip((USER_VECTOR, EXCLUDE, TOP_K), inputs, strict=True))
    )

    diffs, same = {}, {}
    for name, scores, items in (("torchscript", ts_scores, ts_items), ("onnx", onnx_scores, onnx_items)):
        finite = np.isfinite(ref_scores)
        diffs[name] = float(np.abs(scores[finite] - ref_scores[finite]).max()) if finite.any() else 0.0
        same[name] = bool(np.array_equal(items, ref_items))
    return ParityReport(users_checked=len(users), max_abs_score_diff=diffs, ids_identical=same)


def export_all(
    model: FactorModel,
    history: sp.csr_matrix,
    directory: Path,
    *,
    fallback_scores: npt.NDArray[np.floating[Any]] | None = None,
) -> ParityReport:
    """Writes ``model.pt``, ``model.onnx``, the lookup's user table and (ALS) its fold-in data into ``directory``;
    refuses (ExportError) unless parity holds."""
    if not isinstance(model, FactorModel):
        raise ExportError(f"{model.name} is not a factor model; only BPR and ALS export to the factor scorer")
    width = max_history(history)
    if fallback_scores is None:
        fallback_scores = np.bincount(history.indices, minlength=model.n_items).astype(np.float32)
    scorer = build_scorer(model, fallback_scores)
    directory.mkdir(parents=True, exist_ok=True)
    ts_path = export_torchscript(scorer, directory / TORCHSCRIPT_FILE)
    onnx_path = export_onnx(scorer, directory / ONNX_FILE, width)
    report = check_parity(model, history, ts_path, onnx_path, width)
    if not report.ok:
        raise ExportError(
            "export parity failed: "
            + ", ".join(
                f"{fmt}: max |score diff| {report.max_abs_score_diff[fmt]:.2e}, "
                f"ids identical {report.ids_identical[fmt]}"
                for fmt in report.ids_identical
            )
        )
    logger.info("parity ok on %d users: %s", report.users_checked, report.max_abs_score_diff)
    np.save(directory / USERS_FILE, user_table(model))
    fold_in = fold_in_arrays(model)
    if fold_in is not None:
        np.savez(directory / FOLD_IN_FILE, **fold_in)
    return report


def max_history(history: sp.csr_matrix) -> int:
    return int(np.diff(history.indptr).max()) if history.shape[0] else 1
