"""Step 1 of the ensembles: external user id -> the user's vector, the items to exclude, the fallback flag.

Data comes from this version's folder (written by ``recsys publish``): ``ids.npz``, ``history.npz``, ``users.npy``
and, for ALS, ``fold_in.npz``. Unknown users get the fallback pseudo-user (the scorer then ranks by popularity)
and ``FALLBACK = true``. With ``RECSYS_DATABASE_URL`` in Triton's environment and an ALS model, a poller follows
new clicks in PostgreSQL and folds those listeners in live (``trainer.serving_live``): a brand-new listener gets
personal recommendations after a few plays, without retraining. With the parameter ``personal = false``
(recsys_lookup_popular) everyone gets the fallback vector: the popularity ranking minus what they have heard.
Every request of a batch gets its own response; a bad one gets INVALID_ARG without failing the others.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from trainer.run_files import FOLD_IN_FILE, IDS_FILE
from trainer.serving_steps import FoldIn, LivePlays, UserLookup, check_request, decode_user_ids


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_top_k = int(params.get("max_top_k", "1000"))
        self.personal = params.get("personal", "true").lower() == "true"
        self.version = int(args["model_version"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.lookup = UserLookup(folder)
        self.poller = None
        dsn = os.environ.get("RECSYS_DATABASE_URL")
        live = params.get("live_fold_in", "true").lower() == "true"
        if self.personal and live and dsn and (folder / FOLD_IN_FILE).exists():
            from trainer.serving_live import FeedbackPoller  # asyncpg only where live fold-in runs

            plays = LivePlays(FoldIn(folder / FOLD_IN_FILE), self.lookup.training_plays(), self.lookup.width)
            self.lookup.live = plays
            with np.load(folder / IDS_FILE, allow_pickle=False) as npz:
                items = {str(item): i for i, item in enumerate(npz["item_ids"].tolist())}
            self.poller = FeedbackPoller(dsn, items, plays.add)
            self.poller.start()

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        keys = decode_user_ids(pb_utils.get_input_tensor_by_name(request, "USER_ID").as_numpy())
        top_k = pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy().reshape(-1)
        problem = check_request(keys, top_k, self.max_top_k)
        if problem is not None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG))
        vectors, exclude, unknown = self.lookup(keys)
        if not self.personal:
            vectors = np.broadcast_to(self.lookup.table[-1], vectors.shape).copy()
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("USER_VECTOR", vectors),
                pb_utils.Tensor("EXCLUDE", exclude),
                pb_utils.Tensor("FALLBACK", unknown[:, None]),
                pb_utils.Tensor("MODEL_VERSION", np.full((len(keys), 1), self.version, dtype=np.int64)),
            ]
        )

    def finalize(self) -> None:
        if self.poller is not None:
            self.poller.stop()
