"""Triton ``ModelConfig`` messages built from a few plain descriptions, for three flavours.

* ``local``: every step is a python-backend model (the server bundled with nvidia-pytriton has no pytorch or
  onnxruntime backend); the scorers host ``torch.jit`` / ``onnxruntime`` inside :class:`serving.models.ScorerModel`.
* ``native``: the NGC tritonserver image; scorers run on its ``pytorch`` (libtorch) and ``onnxruntime`` backends,
  the lookup and top-k steps stay python models.
* ``gpu``: the local flavour with the scorers as GPU instances (:func:`trainer.triton.gpu.gpu_config`).

All flavours share tensor names, dtypes, dims, batching and the ensembles, so what the tests serve locally is what
production serves. Configs are messages, never edited as text: pinning an ensemble or a version policy is a field
assignment on the message (:func:`pinned`, :func:`only_version`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc.model_config_pb2 import ModelConfig as ModelConfig  # re-exported for the families

from recsys.core.errors import ConfigError
from serving.contract import MAX_BATCH_SIZE, ONNX_FILE, SCORES, TORCHSCRIPT_FILE


class Flavour(StrEnum):
    local = "local"
    native = "native"
    gpu = "gpu"


def flavour_of(value: Flavour | str) -> Flavour:
    try:
        return Flavour(value)
    except ValueError:
        raise ConfigError(f"unknown flavour {value!r}; choose {', '.join(f.value for f in Flavour)}") from None


DType = Literal["TYPE_STRING", "TYPE_INT64", "TYPE_FP32", "TYPE_BOOL"]


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: DType
    dims: tuple[int, ...] = (-1,)


def _add(target: object, tensors: Sequence[Tensor]) -> None:
    for tensor in tensors:
        target.add(name=tensor.name, data_type=mc.DataType.Value(tensor.dtype), dims=list(tensor.dims))  # type: ignore[attr-defined]


def python_model(
    name: str,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    parameters: Mapping[str, str] | None = None,
    *,
    instances: int = 1,
) -> ModelConfig:
    """A python-backend step: dynamic batching without a queue delay, two versions kept (for the hot swap)."""
    config = ModelConfig(name=name, backend="python", max_batch_size=MAX_BATCH_SIZE)
    config.version_policy.latest.num_versions = 2
    _add(config.input, inputs)
    _add(config.output, outputs)
    config.dynamic_batching.SetInParent()  # max_queue_delay_microseconds 0: a quiet server adds no delay
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    for key, value in sorted((parameters or {}).items()):
        config.parameters[key].string_value = value
    return config


def scorer_model(
    name: str,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    fmt: Literal["torchscript", "onnx"],
    flavour: Flavour,
    parameters: Mapping[str, str] | None = None,
) -> ModelConfig:
    """A step that runs a version's export: a python model hosting its runtime (local), or Triton's own backend."""
    config = python_model(name, inputs, outputs, {"format": fmt, **(parameters or {})})
    if flavour is Flavour.native:
        config.backend = "pytorch" if fmt == "torchscript" else "onnxruntime"
        config.default_model_filename = TORCHSCRIPT_FILE if fmt == "torchscript" else ONNX_FILE
        config.ClearField("parameters")
    return config


def ensemble(name: str, steps: Sequence[ModelConfig], outputs: Sequence[str]) -> ModelConfig:
    """The ensemble running ``steps`` in order, wired by tensor name.

    Its inputs are the first step's; a step input is taken from the ensemble's inputs or from the latest earlier
    step that outputs that name. A step output named in ``outputs`` is public unless a later step outputs it too
    (the scorer's SCORES become ``candidate_scores``, the top-k step's are public); internal tensors are named in
    lower case.
    """
    config = ModelConfig(name=name, platform="ensemble", max_batch_size=steps[0].max_batch_size)
    config.input.extend(steps[0].input)
    produced: dict[str, str] = {t.name: t.name for t in steps[0].input}
    declared: dict[str, mc.ModelOutput] = {}
    for position, step in enumerate(steps):
        later = {t.name for s in steps[position + 1 :] for t in s.output}
        item = config.ensemble_scheduling.step.add(model_name=step.name, model_version=-1)
        for tensor in step.input:
            if tensor.name not in produced:
                raise ConfigError(f"{name}: no earlier step of {step.name} outputs {tensor.name}")
            item.input_map[tensor.name] = produced[tensor.name]
        for tensor in step.output:
            public = tensor.name in outputs and tensor.name not in later
            internal = f"candidate_{tensor.name.lower()}" if tensor.name == SCORES else tensor.name.lower()
            produced[tensor.name] = tensor.name if public else internal
            item.output_map[tensor.name] = produced[tensor.name]
            if public:
                declared[tensor.name] = tensor
    missing = [o for o in outputs if o not in declared]
    if missing:
        raise ConfigError(f"{name}: no step outputs {', '.join(missing)}")
    config.output.extend(declared[o] for o in outputs)
    return config


def pinned(config: ModelConfig, version: int) -> ModelConfig:
    """An ensemble with every step pinned to ``version``: loading it switches all steps at once."""
    out = ModelConfig()
    out.CopyFrom(config)
    for step in out.ensemble_scheduling.step:
        step.model_version = version
    return out


def only_version(config: ModelConfig, version: int) -> ModelConfig:
    """A step with a version policy that keeps ``version`` alone (the previous one is then unloaded)."""
    out = ModelConfig()
    out.CopyFrom(config)
    out.version_policy.specific.versions[:] = [version]
    return out


def render(config: ModelConfig) -> str:
    """``config.pbtxt`` text."""
    text: str = text_format.MessageToString(config)
    return text


def parse(text: str) -> ModelConfig:
    return text_format.Parse(text, ModelConfig())


def as_override(config: ModelConfig) -> str:
    """The JSON a model-control load takes as its ``config`` parameter."""
    text: str = json_format.MessageToJson(config, preserving_proto_field_name=True)
    return text
