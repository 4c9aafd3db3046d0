"""What Triton serves, once per model family: the factor family (BPR, ALS) and the session family (GRU4Rec).

A :class:`Family` names its step models, the files of each step's version folder, its ensembles and how to
build their configs and exports; export, parity, publish, config rendering, hot swap, the S3 helper,
``recsys serve triton`` and the local stack all read it from here, so a third family is one more instance.

The factor family's request path: ``recsys_lookup`` (listener id -> their user row, or a live fold-in, or the
fallback pseudo-user; the items they heard) -> the exported scorer (one matrix product, heard items masked,
top-k; TorchScript in ``recsys_a``, ONNX in ``recsys_b``) -> ``recsys_topk`` (each request's k, external ids).
``recsys_popular`` serves the fallback row to everyone (popularity minus what they heard) from the same version,
and ``recsys_fused`` runs recsys_b's path in one model: the yardstick the ensembles are measured against.
``recsys_ann`` is ``recsys_lookup`` -> ``recsys_scorer_ann``, a FAISS index built and recall-gated at publish
(``trainer.ann``) only when asked or from the catalogue threshold on (HNSW); the exact ensembles stay. The index
answers best first, so its step also does the top-k step's work (each request's k, external ids): one
python-backend hop less, ~0.75 ms of the ~3 ms the 1M-item path took on a CPU host. It is an optional step: a
version without an index has no ``recsys_scorer_ann`` folder, and ``recsys_ann`` is not loaded.

The session family's path (``recsys_c``): ``recsys_session_lookup`` (the listener's latest plays, oldest first)
-> the exported GRU4Rec scorer (the graph masks the plays it was given; an empty row gets the popularity
fallback) -> ``recsys_session_topk``. Its item index space is the GRU4Rec run's own, hence its own top-k step.
ONNX fixes the sequence length ``L`` at export (the GRU loop is unrolled) and Triton's onnxruntime backend
refuses dims that differ from the graph's, so ``L`` is part of the rendered configs and publish exports with the
repository's ``L``. Locally the session scorer runs ONNX: 0.46 ms against TorchScript's 0.96 ms per query on one
thread (``benchmarks/results/gru4rec.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.core.errors import ArtifactError, ConfigError
from serving.contract import (
    ANN_FILE,
    ANN_INDEX_FILE,
    EXCLUDE,
    FALLBACK,
    FOLD_IN_FILE,
    HISTORY_FILE,
    IDS_FILE,
    ITEM_IDS,
    ITEM_SEQUENCE,
    ITEMS,
    MAX_TOP_K,
    MODEL_VERSION,
    ONNX_FILE,
    SCORES,
    SEQUENCE_LENGTH,
    SEQUENCES_FILE,
    TOP_K,
    TORCHSCRIPT_FILE,
    USER_ID,
    USER_VECTOR,
    USERS_FILE,
)
from trainer.ann import AnnPolicy
from trainer.triton.configs import Flavour, ModelConfig, Tensor, ensemble, python_model, scorer_model

if TYPE_CHECKING:
    from trainer.exporting import ParityReport

# ------------------------------------------------------------------------------------------------ names
LOOKUP = "recsys_lookup"
LOOKUP_POPULAR = "recsys_lookup_popular"
SCORER_TORCHSCRIPT = "recsys_scorer_torchscript"
SCORER_ONNX = "recsys_scorer_onnx"
TOPK = "recsys_topk"
FUSED = "recsys_fused"
SCORER_ANN = "recsys_scorer_ann"  # approximate: a FAISS index over the items (trainer.ann, serving.retrieval)
ENSEMBLE_A = "recsys_a"  # factor model, TorchScript scorer
ENSEMBLE_B = "recsys_b"  # factor model, ONNX scorer
ENSEMBLE_POPULAR = "recsys_popular"  # popularity minus what the listener heard, for personal-vs-popular tests
ENSEMBLE_ANN = "recsys_ann"  # factor model, approximate scorer (only versions published with an index)
#: Where the ONNX export keeps weights over ``trainer.exporting.ONNX_EXTERNAL_DATA_BYTES`` (1 GiB: from about 4M items
#: x 64 factors; protobuf refuses 2 GB); it travels with model.onnx, which names it relative to its own folder.
ONNX_DATA_FILE = f"{ONNX_FILE}.data"

SESSION_LOOKUP = "recsys_session_lookup"
SESSION_SCORER = "recsys_session_scorer"
SESSION_TOPK = "recsys_session_topk"
ENSEMBLE_C = "recsys_c"  # GRU4Rec

#: What every ensemble (and the fused model) answers, in order: the gateway serves any of them alike.
PUBLIC_INPUTS = (Tensor(USER_ID, "TYPE_STRING", (1,)), Tensor(TOP_K, "TYPE_INT64", (1,)))
PUBLIC_OUTPUTS = (ITEM_IDS, SCORES, FALLBACK, MODEL_VERSION)
_CANDIDATES = (Tensor(SCORES, "TYPE_FP32"), Tensor(ITEMS, "TYPE_INT64"))
_ANSWER = (
    Tensor(ITEM_IDS, "TYPE_STRING"),
    Tensor(SCORES, "TYPE_FP32"),
    Tensor(FALLBACK, "TYPE_BOOL", (1,)),
    Tensor(MODEL_VERSION, "TYPE_INT64", (1,)),
)


@dataclass(frozen=True)
class Options:
    """Choices fixed when a repository is rendered (and read back from it at publish)."""

    sequence_length: int = SEQUENCE_LENGTH
    live_fold_in: bool = True
    ann: AnnPolicy = field(default_factory=AnnPolicy)  # a publish choice, not read back from the repository

    def __post_init__(self) -> None:
        if self.sequence_length < 1:
            raise ConfigError(f"sequence_length must be >= 1, got {self.sequence_length}")


@dataclass(frozen=True)
class Exported:
    """What a family's export wrote for one run: file name -> path, the parity figures, manifest extras."""

    files: Mapping[str, Path]
    parity: ParityReport
    manifest: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    name: str
    models: tuple[str, ...]  # the trained models (registry names) it serves
    files: Mapping[str, tuple[str, ...]]  # step model -> the files of its version folder, besides model.py
    ensembles: Mapping[str, tuple[str, ...]]  # ensemble -> its steps, in order
    build_steps: Callable[[Flavour, Options], list[ModelConfig]]
    export: Callable[[Path, Path, Options], Exported]  # (run dir, staging folder, options); imports torch
    optional_files: tuple[str, ...] = ()  # files a run may lack (ALS's fold-in data; BPR has none)
    #: steps a version may lack (the approximate scorer: an index is built only when asked or for a large catalogue);
    #: a version holds one when its export wrote all of the step's files, and serves the ensembles over it only then
    optional_steps: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)  # a renamed step -> the model whose code it runs

    def source_of(self, model: str) -> str:
        """The ``triton_models/`` folder whose ``model.py`` the step ``model`` runs."""
        return self.sources.get(model, model)

    def renamed(self, suffix: str) -> Family:
        """The same family under other model names (``recsys_b`` -> ``recsys_b<suffix>``): one repository can then
        serve several lineages of it side by side, e.g. the arms of an experiment that pin different versions."""
        if not suffix or not suffix.replace("_", "").isalnum():
            raise ConfigError(f"a family suffix is letters, digits and _, got {suffix!r}")
        build = self.build_steps

        def build_steps(flavour: Flavour, options: Options) -> list[ModelConfig]:
            configs = build(flavour, options)
            for config in configs:
                config.name += suffix
            return configs

        return replace(
            self,
            name=self.name + suffix,
            files={model + suffix: files for model, files in self.files.items()},
            ensembles={name + suffix: tuple(s + suffix for s in chain) for name, chain in self.ensembles.items()},
            build_steps=build_steps,
            sources={model + suffix: self.source_of(model) for model in self.files},
            optional_steps=tuple(model + suffix for model in self.optional_steps),
        )

    @property
    def steps(self) -> tuple[str, ...]:
        """Every versioned model, the optional ones included."""
        return tuple(self.files)

    @property
    def required_steps(self) -> tuple[str, ...]:
        """The steps every version holds (a version exists once all of them hold it)."""
        return tuple(model for model in self.files if model not in self.optional_steps)

    def ensembles_over(self, steps: tuple[str, ...]) -> tuple[str, ...]:
        """The ensembles a version holding ``steps`` serves: those whose every step it holds."""
        return tuple(name for name, chain in self.ensembles.items() if set(chain) <= set(steps))

    def configs(self, flavour: Flavour, options: Options | None = None) -> list[ModelConfig]:
        """Every model of the family in ``flavour``: the steps, then the ensembles."""
        options = options or Options()
        steps = self.build_steps(Flavour.local if flavour is Flavour.gpu else flavour, options)
        by_name = {config.name: config for config in steps}
        ensembles = [
            ensemble(name, [by_name[step] for step in chain], PUBLIC_OUTPUTS) for name, chain in self.ensembles.items()
        ]
        configs = [*steps, *ensembles]
        if flavour is Flavour.gpu:
            from trainer.triton.gpu import gpu_config  # type: ignore[import-not-found, unused-ignore]

            configs = [gpu_config(config) for config in configs]
        return configs


# ------------------------------------------------------------------------------------------------ factor


def _factor_steps(flavour: Flavour, options: Options) -> list[ModelConfig]:
    vector, exclude = Tensor(USER_VECTOR, "TYPE_FP32"), Tensor(EXCLUDE, "TYPE_INT64")
    lookup_out = (vector, exclude, Tensor(FALLBACK, "TYPE_BOOL", (1,)), Tensor(MODEL_VERSION, "TYPE_INT64", (1,)))
    live = "true" if options.live_fold_in else "false"
    scorer_in = (vector, exclude, Tensor(TOP_K, "TYPE_INT64", (1,)))
    topk_in = (Tensor(ITEMS, "TYPE_INT64"), Tensor(SCORES, "TYPE_FP32"), Tensor(TOP_K, "TYPE_INT64", (1,)))
    topk_out = (Tensor(ITEM_IDS, "TYPE_STRING"), Tensor(SCORES, "TYPE_FP32"))
    limits = {"max_top_k": str(MAX_TOP_K)}
    return [
        python_model(LOOKUP, PUBLIC_INPUTS, lookup_out, {**limits, "personal": "true", "live_fold_in": live}),
        python_model(LOOKUP_POPULAR, PUBLIC_INPUTS, lookup_out, {**limits, "personal": "false"}),
        scorer_model(SCORER_TORCHSCRIPT, scorer_in, _CANDIDATES, "torchscript", flavour),
        scorer_model(SCORER_ONNX, scorer_in, _CANDIDATES, "onnx", flavour),
        python_model(TOPK, topk_in, topk_out),
        python_model(FUSED, PUBLIC_INPUTS, _ANSWER, {**limits, "format": "onnx"}),
        python_model(SCORER_ANN, scorer_in, topk_out, {**limits, "threads": "1"}),
    ]


def _export_factor(run_dir: Path, staging: Path, options: Options) -> Exported:
    from trainer.artifacts import load_run
    from trainer.export import ExportError, export_all
    from trainer.models.base import FactorModel

    run = load_run(run_dir)
    if not isinstance(run.model, FactorModel):
        raise ExportError(f"{run_dir}: a {run.model.name} model cannot be served by the factor scorer")
    parity = export_all(run.model, run.history, staging)
    ann = _export_ann(run.model, run.history, staging, options.ann)
    files = {IDS_FILE: run_dir / IDS_FILE, HISTORY_FILE: run_dir / HISTORY_FILE}
    exported = (TORCHSCRIPT_FILE, ONNX_FILE, ONNX_DATA_FILE, USERS_FILE, FOLD_IN_FILE, ANN_INDEX_FILE, ANN_FILE)
    files |= {name: staging / name for name in exported}
    manifest = {"n_items": run.model.n_items, "n_users": run.model.n_users, "ann": ann, "ann_policy": options.ann.kind}
    return Exported(files, parity, manifest)


def _export_ann(model: Any, history: Any, staging: Path, policy: AnnPolicy) -> dict[str, Any] | None:
    """The approximate scorer's index for the exported factors, gated on recall@10 (``trainer.ann``), when the
    policy builds one for this catalogue (``AnnPolicy.kind_for``); None (nothing written) otherwise."""
    import numpy as np

    from trainer.ann import build_and_check

    if policy.kind_for(model.n_items) is None:
        return None
    _, items, bias = model.factors()
    fallback = np.bincount(history.indices, minlength=model.n_items).astype(np.float32)  # as export_all's
    users = np.load(staging / USERS_FILE, mmap_mode="r")
    return build_and_check(items, bias, fallback, users, history, staging, policy).as_manifest()


FACTOR = Family(
    name="factor",
    models=("als", "bpr"),
    files={
        LOOKUP: (IDS_FILE, HISTORY_FILE, USERS_FILE, FOLD_IN_FILE),
        LOOKUP_POPULAR: (IDS_FILE, HISTORY_FILE, USERS_FILE),
        SCORER_TORCHSCRIPT: (TORCHSCRIPT_FILE,),
        SCORER_ONNX: (ONNX_FILE, ONNX_DATA_FILE),
        TOPK: (IDS_FILE,),
        FUSED: (IDS_FILE, HISTORY_FILE, USERS_FILE, ONNX_FILE, ONNX_DATA_FILE),
        SCORER_ANN: (ANN_INDEX_FILE, ANN_FILE, IDS_FILE),
    },
    ensembles={
        ENSEMBLE_A: (LOOKUP, SCORER_TORCHSCRIPT, TOPK),
        ENSEMBLE_B: (LOOKUP, SCORER_ONNX, TOPK),
        ENSEMBLE_POPULAR: (LOOKUP_POPULAR, SCORER_ONNX, TOPK),
        ENSEMBLE_ANN: (LOOKUP, SCORER_ANN),
    },
    build_steps=_factor_steps,
    export=_export_factor,
    optional_files=(FOLD_IN_FILE, ONNX_DATA_FILE),
    optional_steps=(SCORER_ANN,),
)

# ------------------------------------------------------------------------------------------------ session


def _session_steps(flavour: Flavour, options: Options) -> list[ModelConfig]:
    sequence = Tensor(ITEM_SEQUENCE, "TYPE_INT64", (options.sequence_length,))
    lookup_out = (sequence, Tensor(FALLBACK, "TYPE_BOOL", (1,)), Tensor(MODEL_VERSION, "TYPE_INT64", (1,)))
    lookup_params = {
        "max_top_k": str(MAX_TOP_K),
        "sequence_length": str(options.sequence_length),
        "sequences_file": SEQUENCES_FILE,
    }
    topk_in = (Tensor(ITEMS, "TYPE_INT64"), Tensor(SCORES, "TYPE_FP32"), Tensor(TOP_K, "TYPE_INT64", (1,)))
    return [
        python_model(SESSION_LOOKUP, PUBLIC_INPUTS, lookup_out, lookup_params),
        scorer_model(SESSION_SCORER, (sequence, Tensor(TOP_K, "TYPE_INT64", (1,))), _CANDIDATES, "onnx", flavour),
        python_model(SESSION_TOPK, topk_in, (Tensor(ITEM_IDS, "TYPE_STRING"), Tensor(SCORES, "TYPE_FP32"))),
    ]


def _export_session(run_dir: Path, staging: Path, options: Options) -> Exported:
    import numpy as np

    from trainer.export_session import export_session_all, load_session_run, recent_plays

    run = load_session_run(run_dir)
    length = options.sequence_length
    exported = export_session_all(run.model, staging, max_len=length)
    indptr, indices = recent_plays(run.model.user_sequences, length, run.model.n_items)
    np.savez(staging / SEQUENCES_FILE, indptr=indptr, indices=indices, sequence_length=np.int64(length))
    files = {
        IDS_FILE: run_dir / IDS_FILE,
        SEQUENCES_FILE: staging / SEQUENCES_FILE,
        ONNX_FILE: exported.onnx,
        ONNX_DATA_FILE: exported.onnx.with_name(ONNX_DATA_FILE),  # written only for a scorer over 1 GiB
        TORCHSCRIPT_FILE: exported.torchscript,
    }
    manifest = {"sequence_length": length, "n_items": run.model.n_items, "n_users": len(run.user_ids)}
    return Exported(files, exported.parity, manifest)


SESSION = Family(
    name="session",
    models=("gru4rec",),
    files={
        SESSION_LOOKUP: (IDS_FILE, SEQUENCES_FILE),
        SESSION_SCORER: (ONNX_FILE, ONNX_DATA_FILE, TORCHSCRIPT_FILE),
        SESSION_TOPK: (IDS_FILE,),
    },
    ensembles={ENSEMBLE_C: (SESSION_LOOKUP, SESSION_SCORER, SESSION_TOPK)},
    build_steps=_session_steps,
    export=_export_session,
    optional_files=(ONNX_DATA_FILE,),
)

# ------------------------------------------------------------------------------------------------ lookup

FAMILIES: tuple[Family, ...] = (FACTOR, SESSION)


def family_for_model(model: str) -> Family:
    """The family that serves a trained model (``metrics.json``'s ``model``)."""
    for family in FAMILIES:
        if model in family.models:
            return family
    served = ", ".join(m for f in FAMILIES for m in f.models)
    raise ArtifactError(f"a {model} model cannot be published: Triton serves {served}")


def family_of(name: str) -> Family:
    """The family a served model (step or ensemble) belongs to."""
    for family in FAMILIES:
        if name in family.files or name in family.ensembles:
            return family
    raise ConfigError(f"{name!r} is not a model of the repository")


def all_models() -> list[str]:
    return [name for family in FAMILIES for name in (*family.files, *family.ensembles)]
