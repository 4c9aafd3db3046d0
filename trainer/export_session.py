"""Export GRU4Rec's next-item scorer to TorchScript and ONNX, and prove both agree with the trainer.

The exported graph is the scoring step of serving variant C: the listener's recent plays (item indices,
oldest first, right-padded with -1 to a fixed length L) -> the GRU run over them -> scores against every
item -> the plays themselves masked out -> top-k. A row without any play gets the popularity fallback.

The GRU cell is written out with matrix products (the equations of ``torch.nn.GRUCell``) rather than calling
the trainer's modules, so :func:`check_session_parity` really compares two implementations: the exports
against :meth:`GRU4Rec.recommend_sequences`, scores within 1e-5 and identical top-k ids.

ONNX needs L fixed (the loop over plays is unrolled at export); the batch and k stay dynamic. The TorchScript
module also takes other lengths, but serve it with the same L.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys.core.errors import ArtifactError, ConfigError
from serving.contract import IDS_FILE, ITEM_SEQUENCE, METRICS_FILE, MODEL_FILE, PAD, TOP_K
from trainer.exporting import (
    ExportError,
    ParityReport,
    compare,
    ensure_parity,
    export_both,
    masked_top_k,
    run_exports,
)
from trainer.models.gru4rec import GRU4Rec

logger = logging.getLogger(__name__)

__all__ = [
    "SessionExport",
    "SessionRun",
    "SessionScorer",
    "build_session_scorer",
    "check_session_parity",
    "export_session_all",
    "load_session_run",
    "parity_sequences",
    "recent_plays",
]


@dataclass(frozen=True)
class SessionRun:
    model: GRU4Rec
    user_ids: npt.NDArray[Any]
    item_ids: npt.NDArray[Any]
    metrics: dict[str, Any]


def load_session_run(run_dir: Path) -> SessionRun:
    """A GRU4Rec run written by ``save_run``; ArtifactError when it is incomplete or inconsistent."""
    for name in (MODEL_FILE, IDS_FILE, METRICS_FILE):
        if not (run_dir / name).is_file():
            raise ArtifactError(f"{run_dir}: missing {name} (write GRU4Rec runs with trainer.artifacts.save_run)")
    model = GRU4Rec.load(run_dir / MODEL_FILE)
    with np.load(run_dir / IDS_FILE, allow_pickle=False) as npz:
        user_ids, item_ids = npz["user_ids"], npz["item_ids"]
    if model.n_items != len(item_ids):
        raise ArtifactError(f"{run_dir}: the model knows {model.n_items} items, ids.npz lists {len(item_ids)}")
    if len(model.user_sequences) != len(user_ids):
        raise ArtifactError(
            f"{run_dir}: the model holds {len(model.user_sequences)} listeners' recent sequences, ids.npz lists "
            f"{len(user_ids)} users (fit with GRU4Rec.fit on the run's Interactions)"
        )
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    return SessionRun(model=model, user_ids=user_ids, item_ids=item_ids, metrics=metrics)


def recent_plays(
    sequences: npt.NDArray[np.int64], sequence_length: int, n_items: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """CSR ``indptr, indices`` of each row's last ``sequence_length`` valid items, oldest first (what the lookup
    pads back to ``[B, L]``); padding and ids outside ``0..n_items-1`` are dropped, as the scorer skips them."""
    sequences = np.asarray(sequences, dtype=np.int64)
    valid = (sequences >= 0) & (sequences < n_items)
    from_end = np.cumsum(valid[:, ::-1], axis=1)[:, ::-1]  # valid plays at or after each position
    keep = valid & (from_end <= sequence_length)
    indptr = np.concatenate(([0], np.cumsum(keep.sum(axis=1)))).astype(np.int64)
    return indptr, sequences[keep]


class SessionScorer(torch.nn.Module):
    """Recent plays -> GRU -> ``h . Wy^T + By`` (or the fallback for empty rows), plays masked, top-k.

    Column ``n_items`` is a sink whose bias is ``-inf``: padding points there, so masking the plays is one
    in-place scatter and the sink is never recommended. Items the model never trained on have bias ``-inf``.
    """

    def __init__(
        self,
        input_embedding: torch.Tensor,
        cells: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
        out_weights: torch.Tensor,
        out_bias: torch.Tensor,
        known_items: torch.Tensor,
        fallback_scores: torch.Tensor,
    ) -> None:
        super().__init__()
        n_items = out_weights.shape[0]
        sink = torch.tensor([-math.inf])
        # Plain tensor attributes (not buffers), as in trainer.export.FactorScorer: TorchScript keeps them.
        self.embedding = input_embedding.detach().float().contiguous()
        self.w_ih = [w.detach().float().T.contiguous() for w, _, _, _ in cells]
        self.w_hh = [w.detach().float().T.contiguous() for _, w, _, _ in cells]
        self.b_ih = [b.detach().float().contiguous() for _, _, b, _ in cells]
        self.b_hh = [b.detach().float().contiguous() for _, _, _, b in cells]
        self.sizes = [int(w.shape[1]) for _, w, _, _ in cells]
        self.n_layers = len(cells)
        items = torch.cat([out_weights.detach().float(), torch.zeros(1, out_weights.shape[1])])
        self.items_t = items.T.contiguous()
        bias = torch.where(known_items, out_bias.detach().float(), torch.full_like(out_bias, -math.inf).float())
        self.bias = torch.cat([bias, sink]).contiguous()
        self.fallback = torch.cat([fallback_scores.detach().float(), sink]).contiguous()
        self.n_items = int(n_items)

    def forward(self, item_sequence: torch.Tensor, top_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = (item_sequence >= 0) & (item_sequence < self.n_items)
        items = torch.where(valid, item_sequence, torch.zeros_like(item_sequence))
        batch = item_sequence.shape[0]
        hidden = [torch.zeros(batch, size) for size in self.sizes]
        for t in range(item_sequence.shape[1]):
            x = self.embedding[items[:, t]]
            here = valid[:, t : t + 1]
            updated: list[torch.Tensor] = []
            for layer in range(self.n_layers):
                h = hidden[layer]
                gi = torch.addmm(self.b_ih[layer], x, self.w_ih[layer])
                gh = torch.addmm(self.b_hh[layer], h, self.w_hh[layer])
                i_r, i_z, i_n = gi.chunk(3, 1)
                h_r, h_z, h_n = gh.chunk(3, 1)
                r = torch.sigmoid(i_r + h_r)
                z = torch.sigmoid(i_z + h_z)
                n = torch.tanh(i_n + r * h_n)
                x = (1.0 - z) * n + z * h
                updated.append(torch.where(here, x, h))
            hidden = updated
        scores = torch.addmm(self.bias, hidden[self.n_layers - 1], self.items_t)
        scores = torch.where(valid.any(dim=1, keepdim=True), scores, self.fallback)
        columns = torch.where(valid, item_sequence, torch.full_like(item_sequence, self.n_items))
        return masked_top_k(scores, columns, top_k, self.n_items)


def build_session_scorer(model: GRU4Rec) -> SessionScorer:
    """The scorer of a fitted GRU4Rec; refuses NaN/inf weights and says which array holds them."""
    weights = model.weights()
    for name, array in weights.items():
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise ExportError(f"{model.name} {name} has {bad} NaN/inf value(s); refusing to export")
    tensors = {name: torch.from_numpy(array) for name, array in weights.items()}
    n_layers = len(model.params.layers)
    cells = [
        (
            tensors[f"G.{i}.weight_ih"],
            tensors[f"G.{i}.weight_hh"],
            tensors[f"G.{i}.bias_ih"],
            tensors[f"G.{i}.bias_hh"],
        )
        for i in range(n_layers)
    ]
    embedding = tensors["Wy.weight"] if "E.weight" not in tensors else tensors["E.weight"]
    return SessionScorer(  # no training-mode behaviour; eval() keeps the exporters quiet
        embedding,
        cells,
        tensors["Wy.weight"],
        tensors["By.weight"][:, 0],
        model.known_items.cpu(),
        model.fallback_scores.cpu(),
    ).eval()


def example_inputs(max_len: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    sequence = torch.full((batch, max_len), PAD, dtype=torch.int64)
    sequence[:, 0] = 0
    return sequence, torch.full((batch, 1), 10, dtype=torch.int64)


def parity_sequences(model: GRU4Rec, max_len: int, *, sample: int = 200, seed: int = 0) -> npt.NDArray[np.int64]:
    """Rows to check parity on: stored user sequences, random ones of every length, an empty row, odd ids."""
    rng = np.random.default_rng(seed)
    rows: list[npt.NDArray[np.int64]] = []
    if model.n_users:
        users = rng.choice(model.n_users, size=min(sample // 2, model.n_users), replace=False)
        stored = model.user_sequences[np.sort(users)]
        width = min(stored.shape[1], max_len)
        padded = np.full((len(stored), max_len), PAD, dtype=np.int64)
        # The last plays when the stored rows are wider than max_len.
        for index, seq in enumerate(stored):
            plays = seq[seq >= 0][-width:]
            padded[index, : len(plays)] = plays
        rows.extend(padded)
    n_random = max(sample - len(rows), 4)
    lengths = rng.integers(0, max_len + 1, size=n_random)
    lengths[0] = 0  # the fallback row
    lengths[1] = max_len
    for length in lengths.tolist():
        row = np.full(max_len, PAD, dtype=np.int64)
        row[:length] = rng.integers(0, model.n_items, size=length)
        rows.append(row)
    out = np.stack(rows)
    out[-1, 0] = model.n_items + 7  # an unknown id: skipped like padding
    return out


def check_session_parity(
    model: GRU4Rec,
    sequences: npt.NDArray[np.int64],
    torchscript_path: Path,
    onnx_path: Path,
    *,
    k: int = 10,
) -> ParityReport:
    """Both exports against :meth:`GRU4Rec.recommend_sequences` (:func:`trainer.exporting.compare`)."""
    k = min(k, model.n_items)
    ref_items, ref_scores = model.recommend_sequences(sequences, k)
    inputs = {ITEM_SEQUENCE: np.asarray(sequences, dtype=np.int64), TOP_K: np.full((len(sequences), 1), k, np.int64)}
    return compare((ref_scores, ref_items), run_exports(torchscript_path, onnx_path, inputs))


@dataclass(frozen=True)
class SessionExport:
    torchscript: Path
    onnx: Path
    max_len: int
    parity: ParityReport


def export_session_all(
    model: GRU4Rec,
    directory: Path,
    *,
    max_len: int | None = None,
    sequences: npt.NDArray[np.int64] | None = None,
    k: int = 10,
) -> SessionExport:
    """Writes ``model.pt`` and ``model.onnx`` into ``directory``; ExportError unless parity holds.

    ``max_len`` (default: the model's ``max_sequence_length``) is the fixed L of ``ITEM_SEQUENCE``; parity
    is checked on ``sequences`` (default: :func:`parity_sequences`).
    """
    max_len = model.params.max_sequence_length if max_len is None else max_len
    scorer = build_session_scorer(model)
    if sequences is None:
        sequences = parity_sequences(model, max_len)
    if sequences.ndim != 2 or sequences.shape[1] != max_len:
        raise ConfigError(f"parity sequences must be [batch, {max_len}], got shape {sequences.shape}")
    if max_len < 1:
        raise ConfigError(f"max_len must be >= 1, got {max_len}")
    batch = torch.export.Dim("batch", min=1)
    ts_path, onnx_path = export_both(
        scorer,
        directory,
        example_inputs(max_len),
        (ITEM_SEQUENCE, TOP_K),
        {"item_sequence": {0: batch}, "top_k": {0: batch}},
    )
    report = ensure_parity(check_session_parity(model, sequences, ts_path, onnx_path, k=k), "session scorer")
    return SessionExport(torchscript=ts_path, onnx=onnx_path, max_len=max_len, parity=report)
