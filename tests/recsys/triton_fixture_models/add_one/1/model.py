"""Test-only python-backend model: ``OUTPUT0 = INPUT0 + 1``.

The dynamic batcher hands ``execute`` a list of requests; their inputs are stacked into one array, computed once and
split back, one response per request, in order (as in python_backend's examples/add_sub, but batched).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # on the stub's sys.path only

INPUT = "INPUT0"
OUTPUT = "OUTPUT0"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        output = pb_utils.get_output_config_by_name(config, OUTPUT)
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy() for request in requests]
        if len({a.shape[1:] for a in arrays}) == 1:
            outputs = np.split(np.concatenate(arrays) + 1, np.cumsum([len(a) for a in arrays])[:-1])
        else:  # the batcher only groups equal shapes; stay correct if that ever changes
            outputs = [a + 1 for a in arrays]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, out.astype(self.output_dtype))])
            for out in outputs
        ]
