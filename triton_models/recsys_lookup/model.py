"""Step 1 of both ensembles: external user id -> user index, the items to exclude, the fallback flag.

With the parameter ``personal = false`` (model recsys_lookup_popular) every listener gets index -1, so the
scorer serves the popularity ranking minus their history; ``FALLBACK`` still flags unknown listeners only.

Data comes from this version's folder (written by ``recsys publish``): ``ids.npz`` and ``history.npz``. Unknown
users get index -1 (the scorer serves them the popularity fallback) and ``FALLBACK = true``. Every request of a
batch gets its own response; a bad one gets INVALID_ARG without failing the others.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from trainer.serving_steps import UserLookup, check_request, decode_user_ids


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_top_k = int(params.get("max_top_k", "1000"))
        # personal = false serves the popularity ranking to everyone (the baseline variant), still minus history.
        self.personal = params.get("personal", "true").lower() == "true"
        self.version = int(args["model_version"])
        self.lookup = UserLookup(Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        keys = decode_user_ids(pb_utils.get_input_tensor_by_name(request, "USER_ID").as_numpy())
        top_k = pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy().reshape(-1)
        problem = check_request(keys, top_k, self.max_top_k)
        if problem is not None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG))
        index, exclude = self.lookup(keys)
        unknown = index < 0
        if not self.personal:
            index = np.full_like(index, -1)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("USER_INDEX", index[:, None]),
                pb_utils.Tensor("EXCLUDE", exclude),
                pb_utils.Tensor("FALLBACK", unknown[:, None]),
                pb_utils.Tensor("MODEL_VERSION", np.full((len(index), 1), self.version, dtype=np.int64)),
            ]
        )
