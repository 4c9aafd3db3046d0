"""The one contract every recommender follows (fit, score, recommend, save/load).

Evaluation, export and serving only talk to this interface, so a new model (a session model such as
GRU4Rec included: it keeps what it needs from ``Interactions.events`` at fit time) plugs in without touching
them. Weights are saved as ``.npz`` without pickle plus a JSON header, on CPU, whatever device trained them.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Self, cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from recsys.core.errors import ArtifactError, ConfigError
from trainer.data.interactions import Interactions
from trainer.device import resolve_device

FORMAT_VERSION = 1
#: The most scores :meth:`Recommender.recommend` holds at once (256 MB of float32): a batch of users is cut to
#: fit, so scoring 200 users against 10M items takes 8 batches of 25, not one 8 GB matrix.
MAX_SCORE_ELEMENTS = 1 << 26


def users_per_batch(n_items: int, wanted: int = 2048) -> int:
    """How many users to score at once against ``n_items`` within :data:`MAX_SCORE_ELEMENTS` (at least one)."""
    return max(1, min(wanted, MAX_SCORE_ELEMENTS // max(n_items, 1)))


@dataclass(frozen=True)
class Bound:
    """The values a numeric hyperparameter may take: ``low .. high``, an open end excluded; always finite."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        def number(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        return f"{'(' if self.low_open else '['}{number(self.low)}, {number(self.high)}{')' if self.high_open else ']'}"


#: Seeds of numpy and torch generators.
SEED = Bound(0, 2**32 - 1)


@dataclass(frozen=True)
class Params:
    """Hyperparameters of a model; subclasses add fields with defaults and give every numeric field its range in
    ``BOUNDS`` (a test checks that none is missing), so a NaN or an absurd value is refused before a fit, not
    discovered in a model worse than popularity. Subclasses that check more call ``super().__post_init__()``."""

    BOUNDS: ClassVar[dict[str, Bound]] = {}

    def __post_init__(self) -> None:
        model = type(self).__name__.removesuffix("Params")
        for name, bound in self.BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{model} {name} must be a number, got {value!r}")
            if not bound.admits(value):
                raise ConfigError(f"{model} {name}={value!r} is out of range: must be a finite number in {bound}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown parameter(s) for {cls.__name__}: {', '.join(unknown)}")
        return cls(**values)


class Recommender(ABC):
    """Base of all models. Subclasses set ``name`` and ``params_type`` and implement the abstract methods."""

    name: ClassVar[str]
    params_type: ClassVar[type[Params]]

    def __init__(self, params: Params | None = None, *, device: str | torch.device = "cpu") -> None:
        self.params = params if params is not None else self.params_type()
        self.device = resolve_device(device)
        self.n_users = 0
        self.n_items = 0

    @abstractmethod
    def fit(self, train: Interactions, *, show_progress: bool = False) -> Self:
        """Learns from ``train``; users and items keep the indices of its id maps."""

    @abstractmethod
    def score(self, users: npt.NDArray[np.integer[Any]]) -> torch.Tensor:
        """Scores of every item for each user, shape ``(len(users), n_items)``, on ``self.device``."""

    @abstractmethod
    def _state(self) -> dict[str, npt.NDArray[Any]]:
        """Arrays that, with ``params``, restore the fitted model."""

    @abstractmethod
    def _restore(self, arrays: dict[str, npt.NDArray[Any]]) -> None:
        """Inverse of :meth:`_state`."""

    def _check_fitted(self) -> None:
        if self.n_items == 0:
            raise ConfigError(f"{self.name} model is not fitted")

    def recommend(
        self,
        users: npt.ArrayLike,
        k: int = 10,
        *,
        exclude: sp.csr_matrix | None = None,
        batch_size: int = 2048,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top ``k`` item indices and scores per user, best first, without the items in ``exclude``'s rows.

        Excluded items get ``-inf``; when fewer than ``k`` items remain the tail is padded with index ``-1``.
        Users are scored ``batch_size`` at a time, fewer on a large catalogue (:func:`users_per_batch`).
        """
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        k_eff = min(k, self.n_items)
        batch_size = users_per_batch(self.n_items, batch_size)
        out_items = np.full((len(users), k), -1, dtype=np.int64)
        out_scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(users), batch_size):
                batch = users[start : start + batch_size]
                scores = self.score(batch).float()
                if exclude is not None:
                    rows, cols = _excluded(exclude, batch)
                    scores[
                        torch.from_numpy(rows).to(scores.device), torch.from_numpy(cols).to(scores.device)
                    ] = -torch.inf
                top_scores, top_items = torch.topk(scores, k_eff, dim=1)
                top_items_np = top_items.cpu().numpy()
                top_scores_np = top_scores.cpu().numpy()
                top_items_np[~np.isfinite(top_scores_np)] = -1
                out_items[start : start + len(batch), :k_eff] = top_items_np
                out_scores[start : start + len(batch), :k_eff] = top_scores_np
        return out_items, out_scores

    def save(self, path: str | Path) -> None:
        path = Path(path)
        arrays = {key: np.ascontiguousarray(value) for key, value in self._state().items()}
        header = {
            "format_version": FORMAT_VERSION,
            "model": self.name,
            "params": self.params.to_dict(),
            "n_users": self.n_users,
            "n_items": self.n_items,
        }
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> Self:
        """Loads any saved model; called on a subclass it also checks the saved model is of that kind."""
        from trainer.models.registry import model_class

        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"{path}: no such model file")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: not a saved model ({exc})") from exc
        if "__header__" not in arrays:
            raise ArtifactError(f"{path}: missing model header")
        header = json.loads(arrays.pop("__header__").tobytes().decode())
        if header.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path}: unsupported format version {header.get('format_version')}")
        klass = model_class(header["model"])
        if cls is not Recommender and not issubclass(klass, cls):
            raise ArtifactError(f"{path}: holds a {header['model']} model, not {cls.name}")
        model = klass(klass.params_type.from_dict(header["params"]), device=device)
        model.n_users = int(header["n_users"])
        model.n_items = int(header["n_items"])
        model._restore(arrays)
        return cast(Self, model)  # the issubclass check above: a model of the class it was asked on


@dataclass(frozen=True)
class InitialFactors:
    """Where a factor model's fit starts: one row per user and item of the training data (CPU arrays).

    A cold fit draws them at random (:meth:`FactorModel.cold_factors`); a warm start (``trainer/warm.py``) passes
    a published run's factors, aligned by external id, with new users and items drawn as a cold fit would.
    """

    user_factors: npt.NDArray[np.float32]
    item_factors: npt.NDArray[np.float32]
    item_bias: npt.NDArray[np.float32] | None = None

    def check(self, n_users: int, n_items: int, factors: int) -> None:
        """One-line error when the shapes do not fit the data and the model about to start from them."""
        expected: dict[str, tuple[int, ...]] = {"user factors": (n_users, factors), "item factors": (n_items, factors)}
        found: dict[str, tuple[int, ...]] = {
            "user factors": self.user_factors.shape,
            "item factors": self.item_factors.shape,
        }
        if self.item_bias is not None:
            expected["item bias"] = (n_items,)
            found["item bias"] = self.item_bias.shape
        for what, shape in expected.items():
            if tuple(found[what]) != shape:
                raise ConfigError(f"initial {what} have shape {tuple(found[what])}, the fit needs {shape}")


class FactorModel(Recommender):
    """A model whose score is ``user_factors @ item_factors.T (+ item_bias)``: what the exporters need.

    Factor models can start from given factors (``fit(..., initial=...)``): that is how a retrain continues
    from the served model instead of starting over (warm start).
    """

    def __init__(self, params: Params | None = None, *, device: str | torch.device = "cpu") -> None:
        super().__init__(params, device=device)
        self.user_factors = torch.empty(0, 0)
        self.item_factors = torch.empty(0, 0)
        self.item_bias: torch.Tensor | None = None

    @abstractmethod
    def fit(self, train: Interactions, *, show_progress: bool = False, initial: InitialFactors | None = None) -> Self:
        """Learns from ``train``, starting from ``initial`` when given (else from :meth:`cold_factors`)."""

    @abstractmethod
    def cold_factors(self, n_users: int, n_items: int) -> InitialFactors:
        """The random start of a cold fit (seeded by the model's parameters)."""

    def score(self, users: npt.NDArray[np.integer[Any]]) -> torch.Tensor:
        self._check_fitted()
        idx = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device)
        scores = self.user_factors[idx] @ self.item_factors.T
        if self.item_bias is not None:
            scores.add_(self.item_bias)  # in place: one users x items matrix, not two
        return scores

    def factors(
        self,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """User factors, item factors and item bias (or ``None``) as CPU arrays."""
        bias = None if self.item_bias is None else self.item_bias.detach().cpu().numpy()
        return (
            self.user_factors.detach().cpu().numpy(),
            self.item_factors.detach().cpu().numpy(),
            bias,
        )

    def _state(self) -> dict[str, npt.NDArray[Any]]:
        users, items, bias = self.factors()
        state: dict[str, npt.NDArray[Any]] = {"user_factors": users, "item_factors": items}
        if bias is not None:
            state["item_bias"] = bias
        return state

    def _restore(self, arrays: dict[str, npt.NDArray[Any]]) -> None:
        try:
            self.user_factors = torch.from_numpy(arrays["user_factors"]).to(self.device)
            self.item_factors = torch.from_numpy(arrays["item_factors"]).to(self.device)
        except KeyError as exc:
            raise ArtifactError(f"saved {self.name} model lacks array {exc}") from exc
        bias = arrays.get("item_bias")
        self.item_bias = None if bias is None else torch.from_numpy(bias).to(self.device)


def _excluded(
    matrix: sp.csr_matrix, users: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(row-in-batch, item) coordinates of the nonzeros of ``matrix``'s rows ``users``."""
    starts = matrix.indptr[users]
    lengths = matrix.indptr[users + 1] - starts
    rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = matrix.indices[np.repeat(starts, lengths) + offsets].astype(np.int64)
    return rows, cols
