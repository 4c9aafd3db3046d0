"""The in-memory shape every loader produces and every model consumes.

Loaders turn files into :class:`Interactions` (one row per distinct user-item pair) and, when the source has
timestamps, :class:`Events` (every play in time order, for temporal splits and session models). External ids
are kept in :class:`IdMap` so that the matrix side works on dense ``int32`` indices only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from recsys.core.errors import DataError

IntArray = npt.NDArray[np.int64]
IndexArray = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class IdMap:
    """Bijection between external ids (ints or strings) and dense indices ``0..n-1``."""

    ids: npt.NDArray[np.generic]
    _lookup: dict[object, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lookup = {self._key(v): i for i, v in enumerate(self.ids.tolist())}
        if len(lookup) != len(self.ids):
            raise DataError("id map has duplicated external ids")
        object.__setattr__(self, "_lookup", lookup)

    @staticmethod
    def _key(value: object) -> object:
        return value.item() if isinstance(value, np.generic) else value

    @classmethod
    def from_values(cls, values: npt.ArrayLike) -> tuple[IdMap, IndexArray]:
        """Builds the map from raw id values and returns it with the index of every value."""
        uniques, codes = np.unique(np.asarray(values), return_inverse=True)
        return cls(uniques), codes.astype(np.int32)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def is_integer(self) -> bool:
        return np.issubdtype(self.ids.dtype, np.integer)

    def index(self, external: object) -> int | None:
        """Index of one external id, or ``None`` when unknown; ``"42"`` finds integer id 42."""
        key = self._key(external)
        found = self._lookup.get(key)
        if found is None and self.is_integer and isinstance(key, str) and key.lstrip("-").isdigit():
            found = self._lookup.get(int(key))
        return found

    def indices(self, externals: npt.ArrayLike) -> IndexArray:
        """Indices of many external ids; unknown ids map to ``-1``."""
        return np.fromiter(
            (-1 if (i := self.index(v)) is None else i for v in np.asarray(externals).tolist()),
            dtype=np.int32,
        )

    def external(self, indices: npt.ArrayLike) -> npt.NDArray[np.generic]:
        found: npt.NDArray[np.generic] = self.ids[np.asarray(indices)]
        return found

    def to_list(self) -> list[object]:
        return list(self.ids.tolist())


@dataclass(frozen=True)
class Events:
    """Every play in (user, time) order; the raw material of temporal splits and session models."""

    users: IndexArray
    items: IndexArray
    timestamps: IntArray  # seconds since the epoch

    def __post_init__(self) -> None:
        if not (len(self.users) == len(self.items) == len(self.timestamps)):
            raise DataError("events columns have different lengths")

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Interactions:
    """One row per distinct (user, item) pair, with a positive weight (play count or 1)."""

    users: IndexArray
    items: IndexArray
    weights: FloatArray
    user_ids: IdMap
    item_ids: IdMap
    # First time the user met the item (seconds), when the source has time; drives the temporal split.
    timestamps: IntArray | None = None
    item_names: npt.NDArray[np.object_] | None = None
    events: Events | None = None

    def __post_init__(self) -> None:
        n = len(self.users)
        if len(self.items) != n or len(self.weights) != n:
            raise DataError("interaction columns have different lengths")
        if self.timestamps is not None and len(self.timestamps) != n:
            raise DataError("timestamps and interactions have different lengths")
        if n == 0:
            raise DataError("no interactions: the data set is empty")

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def from_codes(cls, codes: IntArray, n_users: int, n_items: int) -> Interactions:
        """Unit-weight pairs from distinct ``user * n_items + item`` codes, ids 0..n-1: how the benchmarks build a
        large synthetic audience without a Python object per play."""
        return cls(
            users=(codes // n_items).astype(np.int32),
            items=(codes % n_items).astype(np.int32),
            weights=np.ones(len(codes), dtype=np.float32),
            user_ids=IdMap(np.arange(n_users, dtype=np.int64)),
            item_ids=IdMap(np.arange(n_items, dtype=np.int64)),
        )

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def to_csr(self, weights: FloatArray | None = None) -> sp.csr_matrix:
        """Users x items matrix of ``weights`` (default: the stored weights)."""
        values = self.weights if weights is None else weights
        matrix = sp.csr_matrix(
            (values.astype(np.float32), (self.users, self.items)), shape=(self.n_users, self.n_items)
        )
        matrix.sort_indices()
        return matrix

    def subset(self, mask: npt.NDArray[np.bool_]) -> Interactions:
        """Rows where ``mask`` holds, keeping the full id maps (indices stay comparable across splits)."""
        return Interactions(
            users=self.users[mask],
            items=self.items[mask],
            weights=self.weights[mask],
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            timestamps=None if self.timestamps is None else self.timestamps[mask],
            item_names=self.item_names,
            events=self.events_of_pairs(mask),
        )

    def events_of_pairs(self, mask: npt.NDArray[np.bool_]) -> Events | None:
        """The plays of the pairs under ``mask``, in their original order (``None`` without events)."""
        if self.events is None:
            return None
        kept = np.sort(self.users[mask].astype(np.int64) * self.n_items + self.items[mask])
        keys = self.events.users.astype(np.int64) * self.n_items + self.events.items
        pos = np.minimum(np.searchsorted(kept, keys), max(len(kept) - 1, 0))
        inside = (kept[pos] == keys) if len(kept) else np.zeros(len(keys), dtype=bool)
        return Events(self.events.users[inside], self.events.items[inside], self.events.timestamps[inside])

    def item_label(self, index: int) -> str:
        return item_label(self.item_ids, self.item_names, index)


def item_label(item_ids: IdMap, item_names: npt.NDArray[np.generic] | None, index: int) -> str:
    """Human-readable item: its name when known, else its external id."""
    if item_names is not None:
        return str(item_names[index])
    return str(item_ids.ids[index])


def from_frame(
    frame: pd.DataFrame,
    *,
    user_col: str = "user",
    item_col: str = "item",
    weight_col: str | None = "weight",
    time_col: str | None = None,
    item_names: dict[object, str] | None = None,
    source: str = "data",
) -> tuple[Interactions, int]:
    """Aggregates a validated frame of rows into :class:`Interactions`.

    Rows of the same (user, item) pair are summed; the first timestamp is kept and, when there is a time
    column, every row is also kept as an :class:`Events` row. Returns the interactions and the number of rows
    that were folded into an existing pair, so callers can tell the user.
    """
    if frame.empty:
        raise DataError(f"{source}: no rows")
    users_map, users = IdMap.from_values(frame[user_col].to_numpy())
    items_map, items = IdMap.from_values(frame[item_col].to_numpy())
    weights = (
        np.ones(len(frame), dtype=np.float64) if weight_col is None else frame[weight_col].to_numpy(dtype=np.float64)
    )
    times = None if time_col is None else frame[time_col].to_numpy(dtype=np.int64)

    key = users.astype(np.int64) * len(items_map) + items
    unique_keys, inverse = np.unique(key, return_inverse=True)
    summed = np.bincount(inverse, weights=weights, minlength=len(unique_keys))
    first_time = None
    events = None
    if times is not None:
        first_time = np.full(len(unique_keys), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_time, inverse, times)
        order = np.lexsort((times, users))
        events = Events(users[order], items[order], times[order])

    names = None
    if item_names is not None:
        names = np.array([item_names.get(v, str(v)) for v in items_map.ids.tolist()], dtype=object)

    interactions = Interactions(
        users=(unique_keys // len(items_map)).astype(np.int32),
        items=(unique_keys % len(items_map)).astype(np.int32),
        weights=summed.astype(np.float32),
        user_ids=users_map,
        item_ids=items_map,
        timestamps=first_time,
        item_names=names,
        events=events,
    )
    return interactions, len(frame) - len(unique_keys)
