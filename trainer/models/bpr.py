"""Bayesian Personalized Ranking (Rendle et al., UAI 2009) in PyTorch, on CPU or CUDA.

Every step takes a shuffled mini-batch of observed (user, item) pairs, draws negatives uniformly or in
proportion to ``popularity ** neg_exponent``, and, when ``n_candidates > 1``, keeps the candidate the model
currently scores highest (dynamic negative sampling, Zhang et al., SIGIR 2013), which is what lets plain BPR
catch up with WARP. Sampled "negatives" the user actually played are masked out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
import torch
from torch.nn import functional

from recsys.core.errors import ConfigError
from trainer.data.interactions import Interactions
from trainer.models.base import SEED, Bound, FactorModel, InitialFactors
from trainer.models.base import Params as _Params
from trainer.progress import track


@dataclass(frozen=True)
class BPRParams(_Params):
    # Defaults: `recsys tune` (25 TPE trials) on a validation split of HetRec's training part, rounded.
    factors: int = 64
    epochs: int = 60
    batch_size: int = 4096
    learning_rate: float = 0.009
    regularization: float = 0.01
    negatives: str = "uniform"  # or "popularity"
    neg_exponent: float = 0.75
    n_candidates: int = 6
    init_scale: float = 0.1
    seed: int = 0

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "factors": Bound(1, 4096),
        "epochs": Bound(1, 10_000),
        "batch_size": Bound(1, 2**24),
        "learning_rate": Bound(0, 10, low_open=True),
        "regularization": Bound(0, 1e3),
        "neg_exponent": Bound(0, 10),
        "n_candidates": Bound(1, 1000),
        "init_scale": Bound(0, 10, low_open=True),
        "seed": SEED,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.negatives not in ("uniform", "popularity"):
            raise ConfigError(f"BPR negatives must be 'uniform' or 'popularity', got {self.negatives!r}")


class BPR(FactorModel):
    name = "bpr"
    params_type = BPRParams
    params: BPRParams

    def cold_factors(self, n_users: int, n_items: int) -> InitialFactors:
        gen = torch.Generator(device=self.device).manual_seed(self.params.seed)
        users, items = self._draw(n_users, n_items, gen)
        return InitialFactors(users.cpu().numpy(), items.cpu().numpy(), np.zeros(n_items, dtype=np.float32))

    def _draw(self, n_users: int, n_items: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Cold user and item factors, drawn from ``gen`` (the fit goes on drawing its batches from it)."""
        p = self.params
        users = torch.empty(n_users, p.factors, device=self.device).normal_(0.0, p.init_scale, generator=gen)
        items = torch.empty(n_items, p.factors, device=self.device).normal_(0.0, p.init_scale, generator=gen)
        return users, items

    def fit(self, train: Interactions, *, show_progress: bool = False, initial: InitialFactors | None = None) -> Self:
        """Runs ``epochs`` of sampled pairwise steps; from ``initial`` (a warm start) fewer epochs reach as far."""
        p = self.params
        dev = self.device
        gen = torch.Generator(device=dev).manual_seed(p.seed)
        n_users, n_items = train.n_users, train.n_items
        users = torch.from_numpy(train.users.astype(np.int64)).to(dev)
        items = torch.from_numpy(train.items.astype(np.int64)).to(dev)
        positive_keys = torch.sort(users * n_items + items).values

        if p.negatives == "popularity":
            counts = torch.bincount(items, minlength=n_items).double()
            neg_probs = (counts**p.neg_exponent).clamp_min(1e-12)
            neg_probs = neg_probs / neg_probs.sum()
        else:
            neg_probs = None

        user_emb = torch.nn.Embedding(n_users, p.factors, sparse=True, device=dev)
        item_emb = torch.nn.Embedding(n_items, p.factors, sparse=True, device=dev)
        item_bias = torch.nn.Embedding(n_items, 1, sparse=True, device=dev)
        cold_users, cold_items = self._draw(n_users, n_items, gen)  # drawn either way: batches follow the same gen
        with torch.no_grad():
            if initial is None:
                user_emb.weight.copy_(cold_users)
                item_emb.weight.copy_(cold_items)
                item_bias.weight.zero_()
            else:
                initial.check(n_users, n_items, p.factors)
                user_emb.weight.copy_(torch.from_numpy(np.asarray(initial.user_factors, dtype=np.float32)))
                item_emb.weight.copy_(torch.from_numpy(np.asarray(initial.item_factors, dtype=np.float32)))
                bias = initial.item_bias if initial.item_bias is not None else np.zeros(n_items, dtype=np.float32)
                item_bias.weight.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32))[:, None])
        optimizer = torch.optim.SparseAdam(
            [*user_emb.parameters(), *item_emb.parameters(), *item_bias.parameters()], lr=p.learning_rate
        )

        n = len(users)
        for _ in track(range(p.epochs), "BPR", total=p.epochs, enabled=show_progress):
            order = torch.randperm(n, generator=gen, device=dev)
            for start in range(0, n, p.batch_size):
                batch = order[start : start + p.batch_size]
                u, i = users[batch], items[batch]
                j = self._negatives(u, n_items, neg_probs, gen, user_emb, item_emb, item_bias)
                key = u * n_items + j
                pos = torch.searchsorted(positive_keys, key).clamp_max(len(positive_keys) - 1)
                valid = (positive_keys[pos] != key).float()

                pu, qi, qj = user_emb(u), item_emb(i), item_emb(j)
                x_uij = (pu * (qi - qj)).sum(dim=1) + (item_bias(i) - item_bias(j)).squeeze(1)
                loss = -(functional.logsigmoid(x_uij) * valid).sum() / valid.sum().clamp_min(1.0)
                reg = (pu.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()) / len(u)
                optimizer.zero_grad(set_to_none=True)
                (loss + p.regularization * reg).backward()
                optimizer.step()  # type: ignore[no-untyped-call]

        self.user_factors = user_emb.weight.detach()
        self.item_factors = item_emb.weight.detach()
        self.item_bias = item_bias.weight.detach()[:, 0].contiguous()
        self.n_users, self.n_items = n_users, n_items
        return self

    def _negatives(
        self,
        u: torch.Tensor,
        n_items: int,
        probs: torch.Tensor | None,
        gen: torch.Generator,
        user_emb: torch.nn.Embedding,
        item_emb: torch.nn.Embedding,
        item_bias: torch.nn.Embedding,
    ) -> torch.Tensor:
        m = self.params.n_candidates
        if probs is None:
            cand = torch.randint(0, n_items, (len(u), m), generator=gen, device=u.device)
        else:
            cand = torch.multinomial(probs, len(u) * m, replacement=True, generator=gen).view(len(u), m)
        if m == 1:
            return cand[:, 0]
        with torch.no_grad():
            scores = (user_emb.weight[u][:, None, :] * item_emb.weight[cand]).sum(-1)
            scores += item_bias.weight[cand][..., 0]
            best = scores.argmax(dim=1)
        return cand.gather(1, best[:, None])[:, 0]
