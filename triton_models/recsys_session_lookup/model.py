"""Step 1 of ``recsys_c``: external user id -> the listener's recent plays, the fallback flag, the version.

Data comes from this version's folder (written by ``trainer.publish_session``): ``ids.npz`` (user ids by index)
and the ``sequences_file`` parameter's npz (CSR ``indptr``/``indices``: each listener's latest session, its last
``L`` plays, oldest first). ``ITEM_SEQUENCE`` is ``[B, L]`` right-padded with -1. A listener the run does not know,
or one without recent plays, gets an all-padding row (the scorer serves the popularity fallback) and
``FALLBACK = true``. Every request of a batch gets its own response; a bad one gets INVALID_ARG on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from trainer.run_files import IDS_FILE
from trainer.serving_steps import check_request, decode_user_ids, padded_rows


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.max_top_k = int(params.get("max_top_k", "1000"))
        self.width = int(params["sequence_length"])
        self.version = int(args["model_version"])
        with np.load(folder / IDS_FILE, allow_pickle=False) as npz:
            users = npz["user_ids"]
        self.index = {str(u): i for i, u in enumerate(users.tolist())}
        with np.load(folder / params.get("sequences_file", "sequences.npz"), allow_pickle=False) as npz:
            self.indptr = npz["indptr"].astype(np.int64)
            self.indices = npz["indices"].astype(np.int64)
        if len(self.indptr) != len(users) + 1:
            raise ValueError(f"{folder}: sequences for {len(self.indptr) - 1} users, ids for {len(users)}")

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        keys = decode_user_ids(pb_utils.get_input_tensor_by_name(request, "USER_ID").as_numpy())
        top_k = pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy().reshape(-1)
        problem = check_request(keys, top_k, self.max_top_k)
        if problem is not None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG))
        index = np.array([self.index.get(key, -1) for key in keys], dtype=np.int64)
        sequence = padded_rows(self.indptr, self.indices, index, self.width)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("ITEM_SEQUENCE", sequence),
                pb_utils.Tensor("FALLBACK", (sequence[:, :1] < 0)),
                pb_utils.Tensor("MODEL_VERSION", np.full((len(index), 1), self.version, dtype=np.int64)),
            ]
        )
