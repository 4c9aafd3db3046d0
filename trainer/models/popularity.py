"""The baseline every personalised model has to beat: rank items by how many users played them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import torch

from recsys.core.errors import ArtifactError
from trainer.data.interactions import Interactions
from trainer.models.base import Params, Recommender


@dataclass(frozen=True)
class PopularityParams(Params):
    pass


class Popularity(Recommender):
    name = "popularity"
    params_type = PopularityParams

    def __init__(self, params: Params | None = None, *, device: str | torch.device = "cpu") -> None:
        super().__init__(params, device=device)
        self.item_counts = torch.empty(0)

    def fit(self, train: Interactions, *, show_progress: bool = False) -> Self:
        counts = np.bincount(train.items, minlength=train.n_items).astype(np.float32)
        self.item_counts = torch.from_numpy(counts).to(self.device)
        self.n_users, self.n_items = train.n_users, train.n_items
        return self

    def score(self, users: npt.NDArray[np.integer[Any]]) -> torch.Tensor:
        self._check_fitted()
        return self.item_counts.expand(len(users), -1).clone()

    def _state(self) -> dict[str, npt.NDArray[Any]]:
        return {"item_counts": self.item_counts.cpu().numpy()}

    def _restore(self, arrays: dict[str, npt.NDArray[Any]]) -> None:
        if "item_counts" not in arrays:
            raise ArtifactError("saved popularity model lacks array 'item_counts'")
        self.item_counts = torch.from_numpy(arrays["item_counts"]).to(self.device)
