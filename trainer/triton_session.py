"""Serving variant C (GRU4Rec) as data: its step models and the ``recsys_c`` ensemble, for both flavours.

The request path: ``recsys_session_lookup`` turns the listener's id into their most recent plays (their latest
session, oldest first, the last ``L`` plays, right-padded with -1), ``recsys_session_scorer`` runs the exported
GRU4Rec scorer over them (the graph itself masks the plays it was given, so what was just heard never comes
back, and an empty sequence gets the popularity fallback), and ``recsys_session_topk`` cuts each request to its
own k and maps item indices to external ids. The session model has its own item index space (the training
data of the GRU4Rec run), so it has its own top-k step with its own id table rather than sharing ``recsys_topk``.

The classes and the rendering are :mod:`trainer.triton_config`'s, so both descriptions render alike.

* ``local`` flavour: the scorer is a python-backend model hosting onnxruntime (``format = onnx``). ONNX is the
  local choice because it measured faster on one CPU thread: 0.46 ms against TorchScript's 0.96 ms per query
  and 3.2 against 11.2 ms at batch 64 (``benchmarks/results/gru4rec.md``, L = 50). Every version still carries
  both exports, both parity-checked, so ``format = torchscript`` switches the runtime without a new publish.
* ``native`` flavour: the scorer runs on Triton's ``onnxruntime`` backend. ONNX fixes the sequence length ``L``
  at export (the loop over plays is unrolled) and that backend refuses a config whose dims differ from the
  graph's, so ``L`` is part of the description (``ITEM_SEQUENCE`` dims ``[L]`` in both flavours) and publish
  exports with the repository's ``L``.
"""

from __future__ import annotations

from recsys.core.errors import ConfigError
from serving.contract import (
    FALLBACK,
    ITEM_IDS,
    ITEMS,
    MAX_TOP_K,
    MODEL_VERSION,
    ONNX_FILE,
    SCORES,
    TOP_K,
    USER_ID,
)
from trainer.triton_config import Flavour, ModelSpec, Step, Tensor

SESSION_LOOKUP = "recsys_session_lookup"
SESSION_SCORER = "recsys_session_scorer"
SESSION_TOPK = "recsys_session_topk"
ENSEMBLE_C = "recsys_c"  # GRU4Rec variant
SESSION_STEP_MODELS = (SESSION_LOOKUP, SESSION_SCORER, SESSION_TOPK)

#: int64 [B, L]: the listener's recent item indices, oldest first, right-padded with -1 (the exported graph's input)
ITEM_SEQUENCE = "ITEM_SEQUENCE"
#: L: the served sequence length (GRU4RecParams.max_sequence_length's default and the benchmark's export length)
SEQUENCE_LENGTH = 50
#: In the lookup's version folder: CSR ``indptr``/``indices`` of each listener's recent plays (no pickle).
SEQUENCES_FILE = "sequences.npz"
#: The local scorer's runtime (see the module docstring for the measurement behind it).
LOCAL_SCORER_FORMAT = "onnx"


def _check_length(sequence_length: int) -> None:
    if sequence_length < 1:
        raise ConfigError(f"sequence_length must be >= 1, got {sequence_length}")


def session_repository(
    flavour: Flavour | str = Flavour.local, *, sequence_length: int = SEQUENCE_LENGTH
) -> list[ModelSpec]:
    """The session step models, then the ``recsys_c`` ensemble."""
    try:
        flavour = Flavour(flavour)
    except ValueError:
        raise ConfigError(f"unknown flavour {flavour!r}; choose local or native") from None
    _check_length(sequence_length)
    sequence = Tensor(ITEM_SEQUENCE, "TYPE_INT64", (sequence_length,))
    lookup = ModelSpec(
        SESSION_LOOKUP,
        inputs=(Tensor(USER_ID, "TYPE_STRING", (1,)), Tensor(TOP_K, "TYPE_INT64", (1,))),
        outputs=(
            sequence,
            Tensor(FALLBACK, "TYPE_BOOL", (1,)),
            Tensor(MODEL_VERSION, "TYPE_INT64", (1,)),
        ),
        parameters={
            "max_top_k": str(MAX_TOP_K),
            "sequence_length": str(sequence_length),
            "sequences_file": SEQUENCES_FILE,
        },
    )
    scorer_inputs = (sequence, Tensor(TOP_K, "TYPE_INT64", (1,)))
    scorer_outputs = (Tensor(SCORES, "TYPE_FP32", (-1,)), Tensor(ITEMS, "TYPE_INT64", (-1,)))
    if flavour is Flavour.local:
        scorer = ModelSpec(SESSION_SCORER, scorer_inputs, scorer_outputs, parameters={"format": LOCAL_SCORER_FORMAT})
    else:
        scorer = ModelSpec(
            SESSION_SCORER,
            scorer_inputs,
            scorer_outputs,
            backend="onnxruntime",
            default_model_filename=ONNX_FILE,
        )
    topk = ModelSpec(
        SESSION_TOPK,
        inputs=(
            Tensor(ITEMS, "TYPE_INT64", (-1,)),
            Tensor(SCORES, "TYPE_FP32", (-1,)),
            Tensor(TOP_K, "TYPE_INT64", (1,)),
        ),
        outputs=(Tensor(ITEM_IDS, "TYPE_STRING", (-1,)), Tensor(SCORES, "TYPE_FP32", (-1,))),
    )
    return [lookup, scorer, topk, session_ensemble_spec()]


def session_ensemble_spec() -> ModelSpec:
    """``recsys_c``: the public interface of ``recsys_a``/``recsys_b`` (USER_ID, TOP_K in; ITEM_IDS, SCORES,
    FALLBACK, MODEL_VERSION out), so the gateway serves it like any other variant."""
    return ModelSpec(
        ENSEMBLE_C,
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
                SESSION_LOOKUP,
                inputs={USER_ID: USER_ID, TOP_K: TOP_K},
                outputs={ITEM_SEQUENCE: "item_sequence", FALLBACK: FALLBACK, MODEL_VERSION: MODEL_VERSION},
            ),
            Step(
                SESSION_SCORER,
                inputs={ITEM_SEQUENCE: "item_sequence", TOP_K: TOP_K},
                outputs={SCORES: "candidate_scores", ITEMS: "candidate_items"},
            ),
            Step(
                SESSION_TOPK,
                inputs={ITEMS: "candidate_items", SCORES: "candidate_scores", TOP_K: TOP_K},
                outputs={ITEM_IDS: ITEM_IDS, SCORES: SCORES},
            ),
        ),
    )


__all__ = [
    "ENSEMBLE_C",
    "ITEM_SEQUENCE",
    "LOCAL_SCORER_FORMAT",
    "SEQUENCES_FILE",
    "SEQUENCE_LENGTH",
    "SESSION_LOOKUP",
    "SESSION_SCORER",
    "SESSION_STEP_MODELS",
    "SESSION_TOPK",
    "session_ensemble_spec",
    "session_repository",
]
