"""The ``gpu`` flavour: the local flavour's configs with the factor scorers on GPU instances.

:func:`gpu_config` takes one ``ModelConfig`` of the local flavour and returns a modified copy:

* the factor scorers (``recsys_scorer_torchscript``, ``recsys_scorer_onnx``: a python model whose inputs are
  USER_VECTOR, EXCLUDE, TOP_K) and the fused model (a python model answering ITEM_IDS with a ``format``
  parameter) become ``KIND_GPU`` instances; :mod:`serving.gpu` then holds the item matrix on the device, picks
  candidates in fp16 and ranks them in fp32 (``precision``; exact, see that module);
* the CPU steps around them (the factor lookups, the top-k steps) get more instances, so that the Python work
  on the host keeps the GPU fed under concurrency;
* everything else (ensembles, the session family) is returned unchanged.

The counts are NOT yet tuned on this code: they are starting values from the earlier benchmark of a stand-alone
GPU scorer on one H200 (``benchmarks/results/gpu_triton.md``: 4 GPU instances with batching reached 10-14k
infer/s at concurrency 64-256, one instance without queue delay had the best latency at concurrency 1), and no
queue delay, which cost ~0.5 ms at concurrency 1 there. ``benchmarks/gpu_serving.py`` measures this flavour; its
figures should replace these values. ``count`` of a ``KIND_GPU`` group is per GPU (no ``gpus`` list: every GPU
of the node), so a multi-GPU node scales by itself.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from serving.contract import EXCLUDE, ITEM_IDS, ITEMS, SCORES, TOP_K, USER_ID, USER_VECTOR

#: GPU instances per GPU of each factor scorer: two, so one can run its batch on the device while the other reads
#: the next batch's inputs and writes the last one's responses on the host.
SCORER_INSTANCES = 2
#: GPU instances per GPU of the fused model, which also does the lookup and id mapping on the host.
FUSED_INSTANCES = 4
#: Instances of the CPU python steps that feed the scorers (lookups, top-k).
CPU_STEP_INSTANCES = 4
#: A GPU scorer's batch may gather up to this many requests (several ensemble batches of 64 queue behind it).
SCORER_MAX_BATCH = 256
#: fp16 candidates re-ranked in fp32: the answers are the fp32 answers (serving.gpu); "fp32" skips fp16.
PRECISION = "fp16"

_FACTOR_SCORER_INPUTS = (USER_VECTOR, EXCLUDE, TOP_K)


def is_factor_scorer(config: mc.ModelConfig) -> bool:
    return (  # the approximate scorer (FAISS, no "format") takes the same inputs and stays on the CPU
        config.backend == "python"
        and tuple(t.name for t in config.input) == _FACTOR_SCORER_INPUTS
        and "format" in config.parameters
    )


def is_fused(config: mc.ModelConfig) -> bool:
    return (
        config.backend == "python"
        and USER_ID in {t.name for t in config.input}
        and ITEM_IDS in {t.name for t in config.output}
        and "format" in config.parameters
    )


def _host_step(config: mc.ModelConfig) -> bool:
    """A CPU python step around a scorer: a factor lookup (emits USER_VECTOR) or a top-k step (takes ITEMS)."""
    outputs = {t.name for t in config.output}
    inputs = {t.name for t in config.input}
    return config.backend == "python" and (USER_VECTOR in outputs or inputs == {ITEMS, SCORES, TOP_K})


def _instances(config: mc.ModelConfig, count: int, kind: int) -> None:
    del config.instance_group[:]
    config.instance_group.add(count=count, kind=kind)


def gpu_config(config: mc.ModelConfig) -> mc.ModelConfig:
    """``config`` (local flavour) as the gpu flavour serves it; a modified copy, ``config`` is left as it is."""
    out = mc.ModelConfig()
    out.CopyFrom(config)
    if config.platform == "ensemble":
        return out
    if is_factor_scorer(config) or is_fused(config):
        _instances(
            out, SCORER_INSTANCES if is_factor_scorer(config) else FUSED_INSTANCES, mc.ModelInstanceGroup.KIND_GPU
        )
        if is_factor_scorer(config):
            out.max_batch_size = max(out.max_batch_size, SCORER_MAX_BATCH)
        out.parameters["precision"].string_value = PRECISION
        out.parameters.pop("threads", None)
        return out
    if _host_step(config):
        _instances(out, CPU_STEP_INSTANCES, mc.ModelInstanceGroup.KIND_CPU)
    return out


__all__ = ["gpu_config", "is_factor_scorer", "is_fused"]
