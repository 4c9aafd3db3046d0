"""The Triton model repository as data: one description, rendered to ``config.pbtxt`` for two flavours.

* ``local``: every step is a python-backend model (the server bundled with nvidia-pytriton has no pytorch or
  onnxruntime backend), the scorers host ``torch.jit`` / ``onnxruntime`` inside their ``model.py``.
* ``native``: the NGC tritonserver image; the scorers run on its ``pytorch`` (libtorch) and ``onnxruntime``
  backends, the lookup and top-k steps stay python models.

Both flavours share tensor names, dtypes, dims, batching and the ensembles, so what the tests serve locally is
what production serves. ``recsys render-repo`` writes either flavour; the committed ``triton_models/`` is the
``local`` rendering and a test fails when it is stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from recsys.core.errors import ConfigError
from serving.contract import (
    EXCLUDE,
    FALLBACK,
    ITEM_IDS,
    ITEMS,
    MAX_BATCH_SIZE,
    MAX_TOP_K,
    MODEL_VERSION,
    ONNX_FILE,
    SCORES,
    TOP_K,
    TORCHSCRIPT_FILE,
    USER_ID,
    USER_VECTOR,
)

LOOKUP = "recsys_lookup"
# The same lookup with personal scoring switched off: known listeners get the popularity ranking minus what they
# have heard. It makes the baseline variant of a real A/B test (personal vs popular) from the same published run.
LOOKUP_POPULAR = "recsys_lookup_popular"
TOPK = "recsys_topk"
SCORER_TORCHSCRIPT = "recsys_scorer_torchscript"
SCORER_ONNX = "recsys_scorer_onnx"
ENSEMBLE_A = "recsys_a"  # TorchScript variant
ENSEMBLE_B = "recsys_b"  # ONNX variant
VARIANTS = {ENSEMBLE_A: SCORER_TORCHSCRIPT, ENSEMBLE_B: SCORER_ONNX}
ENSEMBLE_POPULAR = "recsys_popular"  # popularity baseline (unheard items first), for personal-vs-popular tests
#: Every ensemble with its (lookup, scorer) steps.
ENSEMBLES = {
    ENSEMBLE_A: (LOOKUP, SCORER_TORCHSCRIPT),
    ENSEMBLE_B: (LOOKUP, SCORER_ONNX),
    ENSEMBLE_POPULAR: (LOOKUP_POPULAR, SCORER_ONNX),
}
STEP_MODELS = (LOOKUP, LOOKUP_POPULAR, SCORER_TORCHSCRIPT, SCORER_ONNX, TOPK)
# The same path as recsys_b in one python model: the comparison the ensembles are measured against.
FUSED = "recsys_fused"
VERSIONED_MODELS = (*STEP_MODELS, FUSED)


class Flavour(StrEnum):
    local = "local"
    native = "native"


DType = Literal["TYPE_STRING", "TYPE_INT64", "TYPE_FP32", "TYPE_BOOL"]


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: DType
    dims: tuple[int, ...]

    def render(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return f'  {{\n    name: "{self.name}"\n    data_type: {self.dtype}\n    dims: [ {dims} ]\n  }}'


@dataclass(frozen=True)
class Step:
    model: str
    inputs: dict[str, str]  # the step's tensor -> ensemble tensor
    outputs: dict[str, str]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    backend: str = "python"
    platform: str = ""
    max_batch_size: int = MAX_BATCH_SIZE
    queue_delay_us: int | None = 0  # None: no dynamic batching
    instances: int = 1
    version_policy: str = "latest { num_versions: 2 }"
    parameters: dict[str, str] = field(default_factory=dict)
    default_model_filename: str = ""
    steps: tuple[Step, ...] = ()

    def render(self) -> str:
        lines = [f'name: "{self.name}"']
        if self.platform:
            lines.append(f'platform: "{self.platform}"')
        else:
            lines.append(f'backend: "{self.backend}"')
        lines.append(f"max_batch_size: {self.max_batch_size}")
        if not self.steps:
            lines.append(f"version_policy: {{ {self.version_policy} }}")
        if self.default_model_filename:
            lines.append(f'default_model_filename: "{self.default_model_filename}"')
        lines.append("input [\n" + ",\n".join(t.render() for t in self.inputs) + "\n]")
        lines.append("output [\n" + ",\n".join(t.render() for t in self.outputs) + "\n]")
        if self.queue_delay_us is not None and not self.steps:
            lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {self.queue_delay_us}\n}}")
        if not self.steps:
            lines.append(f"instance_group [\n  {{\n    count: {self.instances}\n    kind: KIND_CPU\n  }}\n]")
        for key, value in sorted(self.parameters.items()):
            lines.append(f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
        if self.steps:
            lines.append(
                "ensemble_scheduling {\n  step [\n" + ",\n".join(_render_step(s) for s in self.steps) + "\n  ]\n}"
            )
        return "\n".join(lines) + "\n"


def _render_step(step: Step, version: int = -1) -> str:
    maps = [f'      model_name: "{step.model}"', f"      model_version: {version}"]
    maps += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in step.inputs.items()]
    maps += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in step.outputs.items()]
    return "    {\n" + "\n".join(maps) + "\n    }"


def _scorer(name: str, flavour: Flavour, fmt: Literal["torchscript", "onnx"]) -> ModelSpec:
    inputs = (
        Tensor(USER_VECTOR, "TYPE_FP32", (-1,)),
        Tensor(EXCLUDE, "TYPE_INT64", (-1,)),
        Tensor(TOP_K, "TYPE_INT64", (1,)),
    )
    outputs = (Tensor(SCORES, "TYPE_FP32", (-1,)), Tensor(ITEMS, "TYPE_INT64", (-1,)))
    if flavour is Flavour.local:
        return ModelSpec(name, inputs, outputs, parameters={"format": fmt})
    if fmt == "torchscript":
        return ModelSpec(name, inputs, outputs, backend="pytorch", default_model_filename=TORCHSCRIPT_FILE)
    return ModelSpec(name, inputs, outputs, backend="onnxruntime", default_model_filename=ONNX_FILE)


def repository(flavour: Flavour | str = Flavour.local) -> list[ModelSpec]:
    """Every model of the repository, steps first, then the two ensembles."""
    try:
        flavour = Flavour(flavour)
    except ValueError:
        raise ConfigError(f"unknown flavour {flavour!r}; choose local or native") from None
    lookups = [
        ModelSpec(
            name,
            inputs=(Tensor(USER_ID, "TYPE_STRING", (1,)), Tensor(TOP_K, "TYPE_INT64", (1,))),
            outputs=(
                Tensor(USER_VECTOR, "TYPE_FP32", (-1,)),
                Tensor(EXCLUDE, "TYPE_INT64", (-1,)),
                Tensor(FALLBACK, "TYPE_BOOL", (1,)),
                Tensor(MODEL_VERSION, "TYPE_INT64", (1,)),
            ),
            parameters={"max_top_k": str(MAX_TOP_K), "personal": personal},
        )
        for name, personal in ((LOOKUP, "true"), (LOOKUP_POPULAR, "false"))
    ]
    topk = ModelSpec(
        TOPK,
        inputs=(
            Tensor(ITEMS, "TYPE_INT64", (-1,)),
            Tensor(SCORES, "TYPE_FP32", (-1,)),
            Tensor(TOP_K, "TYPE_INT64", (1,)),
        ),
        outputs=(Tensor(ITEM_IDS, "TYPE_STRING", (-1,)), Tensor(SCORES, "TYPE_FP32", (-1,))),
    )
    models = [
        *lookups,
        _scorer(SCORER_TORCHSCRIPT, flavour, "torchscript"),
        _scorer(SCORER_ONNX, flavour, "onnx"),
        topk,
    ]
    fused = ensemble_spec(FUSED)
    models.append(
        ModelSpec(FUSED, fused.inputs, fused.outputs, parameters={"format": "onnx", "max_top_k": str(MAX_TOP_K)})
    )
    models += [ensemble_spec(ensemble) for ensemble in ENSEMBLES]
    return models


def ensemble_spec(name: str) -> ModelSpec:
    """The ensemble ``name`` of :data:`ENSEMBLES` (the fused model shares recsys_b's interface)."""
    lookup, scorer = ENSEMBLES[ENSEMBLE_B if name == FUSED else name]
    return ModelSpec(
        name,
        inputs=(Tensor(USER_ID, "TYPE_STRING", (1,)), Tensor(TOP_K, "TYPE_INT64", (1,))),
        outputs=(
            Tensor(ITEM_IDS, "TYPE_STRING", (-1,)),
            Tensor(SCORES, "TYPE_FP32", (-1,)),
            Tensor(FALLBACK, "TYPE_BOOL", (1,)),
            Tensor(MODEL_VERSION, "TYPE_INT64", (1,)),
        ),
        backend="",
        platform="ensemble",
        queue_delay_us=None,
        steps=(
            Step(
                lookup,
                inputs={USER_ID: USER_ID, TOP_K: TOP_K},
                outputs={
                    USER_VECTOR: "user_vector",
                    EXCLUDE: "exclude",
                    FALLBACK: FALLBACK,
                    MODEL_VERSION: MODEL_VERSION,
                },
            ),
            Step(
                scorer,
                inputs={USER_VECTOR: "user_vector", EXCLUDE: "exclude", TOP_K: TOP_K},
                outputs={SCORES: "candidate_scores", ITEMS: "candidate_items"},
            ),
            Step(
                TOPK,
                inputs={ITEMS: "candidate_items", SCORES: "candidate_scores", TOP_K: TOP_K},
                outputs={ITEM_IDS: ITEM_IDS, SCORES: SCORES},
            ),
        ),
    )


def pinned_ensemble_config(name: str, versions: dict[str, int]) -> str:
    """The ensemble's config with every step pinned to ``versions``: loading it switches all steps at once."""
    spec = ensemble_spec(name)
    text = spec.render()
    for step in spec.steps:
        text = text.replace(_render_step(step), _render_step(step, versions[step.model]))
    return text
