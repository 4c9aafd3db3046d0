"""The Python API: ``ALS`` and ``BPR`` with the interface users of benfred/implicit already know.

``fit`` takes a scipy sparse users x items matrix (as implicit >= 0.5 does) or the project's ``Interactions``;
``recommend``, ``recommend_all``, ``similar_items`` and ``similar_users`` answer with ``(ids, scores)`` arrays;
``save`` writes a run directory in the format of ``recsys train --out``, so ``recsys publish`` and
``recsys recommend`` take a model fitted here, and ``load`` reads any such run back.

This is a thin facade: fitting and ranking are the trainer's own models (:mod:`trainer.models`), so a model fitted
here with a seed recommends exactly what ``recsys train`` fits with the same seed. What the facade adds is the
translation at the boundary: external ids to row indices and back, the filter of already-liked items, and one clear
project error (:mod:`recsys.core.errors`) for every wrong shape, unknown id or unfitted model.

Ids: a model fitted from a matrix knows its rows and columns as ids ``0..n-1``; one fitted from ``Interactions``
(or loaded from a run) knows the external ids of its data. Every method takes and returns those ids, or row
indices with ``by="index"`` (the same thing for a model fitted from a matrix).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from torch.nn import functional

from recsys.core.errors import ArtifactError, ConfigError, DataError
from trainer.artifacts import load_run, save_run
from trainer.data.interactions import IdMap, Interactions
from trainer.models import als, bpr
from trainer.models.als import ALSParams
from trainer.models.base import FactorModel, Params, Recommender
from trainer.models.bpr import BPRParams

__all__ = ["ALS", "BPR", "By", "FactorRecommender"]

#: How ids are given and returned: the external ids of the fitted data, or row/column indices of its matrix.
By = Literal["id", "index"]
Ids = npt.NDArray[Any]
#: A scipy.sparse matrix or array (scipy ships no type information, so this cannot be narrower for mypy).
Sparse = Any
Scores = npt.NDArray[np.float32]

#: ``metrics.json``'s ``data`` for a model fitted from Python: no held-out evaluation stands behind it.
PYTHON_SOURCE = "python"


class FactorRecommender:
    """Base of :class:`ALS` and :class:`BPR`: one implementation of the implicit-style interface for every
    factor model of the trainer (as implicit's ``MatrixFactorizationBase`` is for its models)."""

    _model_type: ClassVar[type[FactorModel]]
    _params_type: ClassVar[type[Params]]

    def __init__(self, *, device: str = "auto", **params: Any) -> None:
        """Hyperparameters are the trainer's (``ALSParams`` / ``BPRParams``: same names, same defaults as
        ``recsys train -p``); an unknown or out-of-range one is a :class:`ConfigError` here, not after a fit."""
        self.params = self._params_type.from_dict(params)
        self.device = device
        self._model: FactorModel | None = None
        self._user_ids = IdMap(np.zeros(0, dtype=np.int64))
        self._item_ids = IdMap(np.zeros(0, dtype=np.int64))
        self._item_names: npt.NDArray[np.str_] | None = None
        self._liked = sp.csr_matrix((0, 0), dtype=np.float32)
        self._metrics: dict[str, Any] = {}

    def __repr__(self) -> str:
        state = f"{self.n_users} users x {self.n_items} items" if self._model is not None else "not fitted"
        return f"{type(self).__name__}({self.params}, device={self.device!r}; {state})"

    # ---- fitting ------------------------------------------------------------------------------------------------

    def fit(self, user_items: Sparse | Interactions, *, show_progress: bool = False) -> Self:
        """Learns from a scipy sparse users x items matrix of play counts (or weights), or from ``Interactions``.

        A matrix's rows and columns become ids ``0..n-1``; ``Interactions`` keep their external ids. What the data
        holds is remembered as each user's liked items, which ``recommend`` leaves out by default.
        """
        data = user_items if isinstance(user_items, Interactions) else interactions_of(user_items)
        model = self._model_type(self.params, device=self.device)
        start = time.perf_counter()
        model.fit(data, show_progress=show_progress)
        self._adopt(model, data.user_ids, data.item_ids, data.to_csr(), data.item_names)
        self._metrics = {
            "model": model.name,
            "params": model.params.to_dict(),
            "fit_seconds": time.perf_counter() - start,
            "n_users": data.n_users,
            "n_items": data.n_items,
            "n_train": len(data),
            "device": str(model.device),
            "data": PYTHON_SOURCE,
            "evaluated": False,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        return self

    def _adopt(
        self,
        model: FactorModel,
        user_ids: IdMap,
        item_ids: IdMap,
        liked: sp.csr_matrix,
        item_names: npt.NDArray[Any] | None,
    ) -> None:
        if liked.shape != (model.n_users, model.n_items) or (len(user_ids), len(item_ids)) != liked.shape:
            raise ArtifactError(
                f"the model knows {model.n_users} x {model.n_items} users x items, its ids {len(user_ids)} x "
                f"{len(item_ids)} and its history {liked.shape[0]} x {liked.shape[1]}: they must agree"
            )
        self._model = model
        self._user_ids, self._item_ids = user_ids, item_ids
        self._item_names = None if item_names is None else np.asarray(item_names).astype(str)
        self._liked = sp.csr_matrix(liked, dtype=np.float32)

    # ---- what the fitted model knows ----------------------------------------------------------------------------

    @property
    def model(self) -> FactorModel:
        """The trainer's fitted model (for export or evaluation); :class:`ConfigError` before ``fit``/``load``."""
        return self._fitted()

    def _fitted(self) -> FactorModel:
        if self._model is None:
            name = type(self).__name__
            raise ConfigError(f"{name} is not fitted: call fit() or {name}.load() first")
        return self._model

    @property
    def n_users(self) -> int:
        return self._fitted().n_users

    @property
    def n_items(self) -> int:
        return self._fitted().n_items

    @property
    def user_ids(self) -> Ids:
        """External id of each user row (``0..n-1`` after a fit on a matrix)."""
        self._fitted()
        return self._user_ids.ids

    @property
    def item_ids(self) -> Ids:
        """External id of each item column (``0..n-1`` after a fit on a matrix)."""
        self._fitted()
        return self._item_ids.ids

    @property
    def user_factors(self) -> npt.NDArray[np.float32]:
        """One row per user, on the CPU (as implicit's ``user_factors``)."""
        return self._fitted().factors()[0]

    @property
    def item_factors(self) -> npt.NDArray[np.float32]:
        """One row per item, on the CPU; BPR's item bias is apart (``model.item_bias``), not an extra column."""
        return self._fitted().factors()[1]

    # ---- recommendations ----------------------------------------------------------------------------------------

    def recommend(
        self,
        userid: npt.ArrayLike,
        user_items: Sparse | None = None,
        N: int = 10,
        *,
        filter_already_liked_items: bool = True,
        filter_items: npt.ArrayLike | None = None,
        by: By = "id",
    ) -> tuple[Ids, Scores]:
        """The ``N`` best items for one user (1-d arrays) or many (2-d, one row per user), best first.

        ``user_items`` is implicit's argument: one sparse row per requested user (``user_items[userid]``), the items
        to leave out when ``filter_already_liked_items``; without it, what the user had in the fitted data is left
        out. ``filter_items`` are never recommended. One user's arrays stop where the catalog runs out; many users'
        rows are padded there with score ``-inf`` and id ``-1`` (``""`` for string ids).
        """
        users = self._indices(self._user_ids, userid, by, "user")
        liked = self._liked_rows(users, user_items, filter_already_liked_items)
        items, scores = self._top(users, self._check_n(N), liked, self._banned(filter_items, by))
        return self._answer(items, scores, np.ndim(userid) == 0, by)

    def recommend_all(
        self,
        user_items: Sparse | None = None,
        N: int = 10,
        *,
        filter_already_liked_items: bool = True,
        filter_items: npt.ArrayLike | None = None,
        by: By = "id",
    ) -> tuple[Ids, Scores]:
        """``recommend`` for every user of the fitted data at once: row ``i`` is for the user ``user_ids[i]``.

        ``user_items`` (one row per user of the fitted data) replaces the fitted data as what to leave out, as in
        implicit's ``recommend_all(user_items)``.
        """
        users = np.arange(self._fitted().n_users, dtype=np.int64)
        liked = self._liked_rows(users, user_items, filter_already_liked_items)
        items, scores = self._top(users, self._check_n(N), liked, self._banned(filter_items, by))
        return self._answer(items, scores, False, by)

    def similar_items(
        self, itemid: npt.ArrayLike, N: int = 10, *, filter_items: npt.ArrayLike | None = None, by: By = "id"
    ) -> tuple[Ids, Scores]:
        """Items nearest to one item (1-d) or many (2-d) by cosine similarity of their factors, best first.

        As in implicit the item itself comes first (similarity 1) unless ``filter_items`` names it.
        """
        single = np.ndim(itemid) == 0
        items = self._indices(self._item_ids, itemid, by, "item")
        banned = self._banned(filter_items, by)
        found, scores = _nearest(self._fitted().item_factors, items, self._check_n(N), banned)
        return self._answer(found, scores, single, by)

    def similar_users(self, userid: npt.ArrayLike, N: int = 10, *, by: By = "id") -> tuple[Ids, Scores]:
        """Users nearest to one user (1-d) or many (2-d) by cosine similarity of their factors; the user first."""
        single = np.ndim(userid) == 0
        users = self._indices(self._user_ids, userid, by, "user")
        found, scores = _nearest(self._fitted().user_factors, users, min(self._check_n(N), self.n_users), None)
        return self._answer(found, scores, single, by, ids=self._user_ids)

    def _top(
        self,
        users: npt.NDArray[np.int64],
        N: int,
        liked: sp.csr_matrix | None,
        banned: npt.NDArray[np.int64] | None,
    ) -> tuple[npt.NDArray[np.int64], Scores]:
        """The trainer's own ranking (``Recommender.recommend``), fed an exclusion matrix by user index.

        ``liked`` has one row per requested position; a user asked for twice may come with two different rows, so
        each round asks for users that are distinct within it.
        """
        model = self._fitted()
        k = min(N, self.n_items)
        exclude = _exclusions(liked, banned, len(users), self.n_items)
        if exclude is None:
            return model.recommend(users, k)
        items = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        occurrence = _occurrence(users)
        for round_ in range(int(occurrence.max(initial=-1)) + 1):
            at = np.flatnonzero(occurrence == round_)
            rows = exclude[at].tocoo()
            by_user = sp.csr_matrix(
                (np.ones(rows.nnz, dtype=np.float32), (users[at][rows.row], rows.col)),
                shape=(self.n_users, self.n_items),
            )
            items[at], scores[at] = model.recommend(users[at], k, exclude=by_user)
        return items, scores

    # ---- ids and checks at the boundary ------------------------------------------------------------------------

    def _indices(self, ids: IdMap, given: npt.ArrayLike, by: By, what: str) -> npt.NDArray[np.int64]:
        """Row indices of the ids (or indices) the caller gave; a :class:`DataError` names the unknown ones."""
        self._fitted()
        values: npt.NDArray[Any] = np.atleast_1d(np.asarray(given))
        if values.ndim != 1:
            raise DataError(f"{what} ids must be one id or a 1-d sequence, got shape {np.shape(given)}")
        if by == "index":
            if values.size and not np.issubdtype(values.dtype, np.integer):
                raise DataError(f"{what} indices must be integers, got {values.dtype} (by='id' takes external ids)")
            index: npt.NDArray[np.int64] = values.astype(np.int64)
            bad = index[(index < 0) | (index >= len(ids))]
            if bad.size:
                raise DataError(f"{what} index {bad[0]} out of range 0..{len(ids) - 1}")
            return index
        if by != "id":
            raise ConfigError(f"by must be 'id' or 'index', got {by!r}")
        found = ids.indices(values).astype(np.int64)
        unknown = values[found < 0]
        if unknown.size:
            shown = ", ".join(repr(v) for v in unknown[:5].tolist())
            more = f" (and {unknown.size - 5} more)" if unknown.size > 5 else ""
            raise DataError(f"unknown {what} id(s) {shown}{more}: the model knows {len(ids)} {what}s")
        return found

    def _liked_rows(
        self, users: npt.NDArray[np.int64], user_items: Sparse | None, filter_already_liked_items: bool
    ) -> sp.csr_matrix | None:
        """One row per requested user of what to leave out: ``user_items`` when given, else the fitted data."""
        rows = None if user_items is None else self._rows_for(user_items, len(users))  # checked even when unused
        if not filter_already_liked_items:
            return None
        return self._liked[users] if rows is None else rows

    def _rows_for(self, user_items: Sparse, n_rows: int) -> sp.csr_matrix:
        """implicit's ``user_items``: exactly one row per requested user, one column per known item."""
        if not sp.issparse(user_items):
            raise DataError(f"user_items must be a scipy sparse matrix, got {type(user_items).__name__}")
        if len(user_items.shape) != 2:
            raise DataError(f"user_items must be 2-d (one row per requested user), got shape {user_items.shape}")
        matrix = sp.csr_matrix(user_items)
        if matrix.shape != (n_rows, self.n_items):
            raise DataError(
                f"user_items has shape {matrix.shape}; it needs one row per requested user and one column per item "
                f"({n_rows}, {self.n_items}): pass user_items[userid], as implicit does"
            )
        return matrix

    def _banned(self, filter_items: npt.ArrayLike | None, by: By) -> npt.NDArray[np.int64] | None:
        if filter_items is None:
            return None
        return self._indices(self._item_ids, filter_items, by, "item")

    @staticmethod
    def _check_n(N: int) -> int:
        if isinstance(N, bool) or not isinstance(N, int | np.integer) or N < 1:
            raise ConfigError(f"N must be an integer >= 1, got {N!r}")
        return int(N)

    def _answer(
        self,
        found: npt.NDArray[np.int64],
        scores: Scores,
        single: bool,
        by: By,
        *,
        ids: IdMap | None = None,
    ) -> tuple[Ids, Scores]:
        """Indices to what the caller asked for; padding (index -1) keeps score -inf and gets id -1 or ``""``."""
        ids = self._item_ids if ids is None else ids
        if by == "id":
            pad: Any = -1 if ids.is_integer else ""
            out = np.where(found >= 0, ids.ids[np.maximum(found, 0)], np.asarray(pad, dtype=ids.ids.dtype))
        else:
            out = found
        if single:
            kept = found[0] >= 0
            return out[0][kept], scores[0][kept]
        return out, scores

    # ---- run directories ----------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Writes a run directory (``model.npz``, ``ids.npz``, ``history.npz``, ``metrics.json``), the format of
        ``recsys train --out``: ``recsys publish PATH`` serves it, ``recsys recommend PATH`` and ``load`` read it.

        A model fitted here carries no held-out evaluation (``metrics.json`` says ``"evaluated": false``); one
        loaded from a run keeps that run's metrics.
        """
        model = self._fitted()
        directory = Path(path)
        if directory.exists() and not directory.is_dir():
            raise ArtifactError(f"{directory}: exists and is not a directory (a model is saved as a run directory)")
        data = _interactions(self._liked, self._user_ids, self._item_ids, self._item_names)
        save_run(directory, model, data, self._metrics)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto") -> Self:
        """Reads a run directory written by ``save`` or ``recsys train``; ``ALS.load`` refuses a BPR run (and the
        reverse), ``FactorRecommender.load`` takes either."""
        run = load_run(Path(path), device=device)
        kinds: dict[type[Recommender], type[FactorRecommender]] = {k._model_type: k for k in (ALS, BPR)}
        klass = kinds.get(type(run.model))
        if klass is None:
            raise ArtifactError(f"{path}: holds a {run.model.name} model; the Python API serves als and bpr")
        if cls is not FactorRecommender and klass is not cls:
            raise ArtifactError(f"{path}: holds a {run.model.name} model, not {cls._model_type.name}")
        assert isinstance(run.model, FactorModel)
        loaded = klass(device=device, **run.model.params.to_dict())
        loaded._adopt(run.model, run.user_ids, run.item_ids, run.history, run.item_names)
        loaded._metrics = dict(run.metrics)
        return cast(Self, loaded)  # checked above: the class it was called on, or one of its subclasses


class ALS(FactorRecommender):
    """Implicit ALS (Hu, Koren & Volinsky 2008), ``trainer.models.als``: parameters of ``ALSParams``
    (``factors``, ``iterations``, ``regularization``, ``alpha``, ``weighting``, ``solver``, ``seed``, ...).

    Unlike implicit's ALS, which takes the matrix's values as confidences, this one weights raw play counts itself
    (BM25 by default, ``weighting="none"`` for raw values), the same as ``recsys train``.
    """

    _model_type = als.ALS
    _params_type = ALSParams
    params: ALSParams


class BPR(FactorRecommender):
    """Bayesian Personalized Ranking (Rendle et al. 2009), ``trainer.models.bpr``: parameters of ``BPRParams``
    (``factors``, ``epochs``, ``learning_rate``, ``regularization``, ``negatives``, ``seed``, ...)."""

    _model_type = bpr.BPR
    _params_type = BPRParams
    params: BPRParams


# ---- pure helpers ---------------------------------------------------------------------------------------------------


def interactions_of(user_items: Sparse) -> Interactions:
    """``Interactions`` of a scipy sparse users x items matrix, ids ``0..n-1``; a :class:`DataError` for anything
    a model cannot learn from (not sparse, not 2-d, negative or non-finite weights, no nonzero)."""
    if not sp.issparse(user_items):
        raise DataError(
            f"fit takes a scipy sparse users x items matrix or Interactions, got {type(user_items).__name__}"
        )
    if len(user_items.shape) != 2:
        raise DataError(f"user_items must be 2-d (users x items), got shape {user_items.shape}")
    if not np.issubdtype(user_items.dtype, np.number) or np.issubdtype(user_items.dtype, np.complexfloating):
        raise DataError(f"user_items must hold real numbers, got dtype {user_items.dtype}")
    matrix = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
    matrix.sum_duplicates()
    if not np.isfinite(matrix.data).all():
        raise DataError("user_items holds NaN or infinite weights")
    if (matrix.data < 0).any():
        raise DataError("user_items holds negative weights: weights are play counts or confidences (>= 0)")
    matrix.eliminate_zeros()
    if matrix.nnz == 0:
        raise DataError(f"user_items of shape {matrix.shape} has no nonzero entry: nothing to learn from")
    n_users, n_items = matrix.shape
    return _interactions(
        matrix, IdMap(np.arange(n_users, dtype=np.int64)), IdMap(np.arange(n_items, dtype=np.int64)), None
    )


def _interactions(
    matrix: sp.csr_matrix, user_ids: IdMap, item_ids: IdMap, item_names: npt.NDArray[Any] | None
) -> Interactions:
    """The pairs of a (canonical) CSR matrix in row-major order: the order of every loader's ``Interactions``, so
    a fit on a matrix draws the same batches as a fit on the data it came from."""
    coo = sp.csr_matrix(matrix).tocoo()
    order = np.lexsort((coo.col, coo.row))
    return Interactions(
        users=coo.row[order].astype(np.int32),
        items=coo.col[order].astype(np.int32),
        weights=coo.data[order].astype(np.float32),
        user_ids=user_ids,
        item_ids=item_ids,
        item_names=None if item_names is None else np.asarray(item_names, dtype=object),
    )


def _exclusions(
    liked: sp.csr_matrix | None, banned: npt.NDArray[np.int64] | None, n_rows: int, n_items: int
) -> sp.csr_matrix | None:
    """One row per requested position: its liked items plus the banned ones (``None`` when nothing is left out)."""
    if banned is None or banned.size == 0:
        return liked
    every_row = sp.csr_matrix(
        (
            np.ones(n_rows * banned.size, dtype=np.float32),
            (np.repeat(np.arange(n_rows), banned.size), np.tile(banned, n_rows)),
        ),
        shape=(n_rows, n_items),
    )
    return every_row if liked is None else sp.csr_matrix(liked + every_row)


def _occurrence(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """For each position, how many times its value occurred before it (0 for the first occurrence)."""
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]]) if len(values) else np.zeros(0, dtype=np.int64)
    lengths = np.diff(np.r_[starts, len(values)])
    occurrence = np.empty(len(values), dtype=np.int64)
    occurrence[order] = np.arange(len(values)) - np.repeat(starts, lengths)
    return occurrence


def _nearest(
    factors: torch.Tensor, rows: npt.NDArray[np.int64], N: int, banned: npt.NDArray[np.int64] | None
) -> tuple[npt.NDArray[np.int64], Scores]:
    """Top ``N`` rows of ``factors`` by cosine similarity to each of ``rows``, best first (padding: -1, -inf)."""
    k = min(N, factors.shape[0])
    with torch.inference_mode():
        unit = functional.normalize(factors.float(), dim=1)
        sims = unit[torch.as_tensor(rows, device=unit.device)] @ unit.T
        if banned is not None and banned.size:
            sims[:, torch.as_tensor(banned, device=unit.device)] = -torch.inf
        top_scores, top = torch.topk(sims, k, dim=1)
    found = top.cpu().numpy().astype(np.int64)
    scores = top_scores.cpu().numpy().astype(np.float32)
    found[~np.isfinite(scores)] = -1
    return found, scores
