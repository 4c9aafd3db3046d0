"""An ONNX scorer whose weights sit in ``model.onnx.data`` (issue 17: a 10M-item catalogue's 2.6 GB of factors
is over protobuf's 2 GB limit) is published with its data file, checksummed, and served by the real Triton: the
factor family's scorers (``recsys_b``, ``recsys_fused``) and GRU4Rec's session scorer (``recsys_c``).

The export threshold is lowered so the tests' small model takes the large models' path. Locally the ONNX scorer
runs onnxruntime inside the python backend (``serving.scorer``), which resolves the data file the way Triton's
native onnxruntime backend does: relative to ``model.onnx`` in the version folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import trainer.exporting as exporting
from recsys.core.triton_client import TritonRecommender
from recsys.stack.triton import TritonConfig, TritonPorts, TritonServer
from serving.contract import ONNX_FILE
from serving.lookup import padded_rows
from trainer.artifacts import load_run, save_run
from trainer.data.synthetic import SyntheticConfig, generate
from trainer.export_session import load_session_run, recent_plays
from trainer.models.gru4rec import GRU4Rec, GRU4RecParams
from trainer.triton.family import (
    ENSEMBLE_B,
    ENSEMBLE_C,
    FACTOR,
    FUSED,
    LOOKUP,
    ONNX_DATA_FILE,
    SCORER_ONNX,
    SESSION,
    SESSION_SCORER,
    TOPK,
    Options,
)
from trainer.triton.publish import publish
from trainer.triton.repository import load_all, manifest, render_repository, verify

SESSION_LENGTH = 6


@pytest.fixture(scope="module")
def repository(small_als_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("external-data-repo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporting, "ONNX_EXTERNAL_DATA_BYTES", 0)  # every model counts as large
        publish(small_als_run, repository)
    return repository


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[TritonServer]:
    with TritonServer(TritonConfig(model_repository=repository, ports=TritonPorts.auto())) as triton:
        for model in (LOOKUP, SCORER_ONNX, TOPK, ENSEMBLE_B, FUSED):
            triton.load_model(model)
        yield triton


def test_the_data_file_is_published_beside_each_onnx_graph_and_checksummed(repository: Path) -> None:
    recorded = manifest(repository, FACTOR, 1)["checksums"]
    for model in (SCORER_ONNX, FUSED):
        folder = repository / model / "1"
        assert (folder / ONNX_DATA_FILE).stat().st_size > (folder / ONNX_FILE).stat().st_size
        assert ONNX_DATA_FILE in recorded[model]
    scorer, fused = ((repository / model / "1" / ONNX_DATA_FILE).stat() for model in (SCORER_ONNX, FUSED))
    assert scorer.st_ino != fused.st_ino  # each folder's own file: damage to one is not damage to both
    assert scorer.st_nlink == fused.st_nlink == 1  # the export's file was moved in by a link, not written twice
    assert verify(repository, FACTOR, 1) == []
    damaged = repository / SCORER_ONNX / "1" / ONNX_DATA_FILE
    original = damaged.read_bytes()
    try:
        damaged.write_bytes(bytes(b ^ 0xFF for b in original[:64]) + original[64:])
        assert any(ONNX_DATA_FILE in problem for problem in verify(repository, FACTOR, 1))
    finally:
        damaged.write_bytes(original)


@pytest.mark.parametrize("model", [ENSEMBLE_B, FUSED])
def test_triton_serves_the_trainers_top10_from_the_external_weights(
    server: TritonServer, small_als_run: Path, model: str
) -> None:
    run = load_run(small_als_run)
    users = np.arange(50)
    expected_items, expected_scores = run.model.recommend(users, 10, exclude=run.history)
    client = TritonRecommender(server.urls.grpc)
    try:
        answers = client.recommend(model, [str(u) for u in run.user_ids.external(users).tolist()], top_k=10)
    finally:
        client.close()
    for row, answer in enumerate(answers):
        assert answer.item_ids == [str(i) for i in run.item_ids.external(expected_items[row]).tolist()]
        np.testing.assert_allclose(answer.scores, expected_scores[row], atol=1e-5)
        assert answer.model_version == 1


# ------------------------------------------------------------------------------------------------ session family


@pytest.fixture(scope="module")
def session_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world = generate(SyntheticConfig(n_users=80, n_items=120, n_genres=4, mean_sessions_per_user=4, seed=5))
    params = GRU4RecParams(layers=(8,), n_sample=32, batch_size=32, n_epochs=1, max_sequence_length=8, seed=1)
    run = tmp_path_factory.mktemp("external-data-session") / "gru4rec"
    save_run(run, GRU4Rec(params).fit(world.interactions), world.interactions, {"model": "gru4rec"})
    return run


@pytest.fixture(scope="module")
def session_repository(session_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("external-data-session-repo")
    render_repository(repository, options=Options(sequence_length=SESSION_LENGTH), families=(SESSION,))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporting, "ONNX_EXTERNAL_DATA_BYTES", 0)  # GRU4Rec's scorer counts as large too
        assert publish(session_run, repository).family is SESSION
    return repository


def test_the_session_scorers_data_file_is_published_and_checksummed(session_repository: Path) -> None:
    folder = session_repository / SESSION_SCORER / "1"
    assert (folder / ONNX_DATA_FILE).stat().st_size > 0  # the GRU's weights (its unrolled graph stays larger)
    assert ONNX_DATA_FILE.encode() in (folder / ONNX_FILE).read_bytes()  # the graph names its data file
    assert ONNX_DATA_FILE in manifest(session_repository, SESSION, 1)["checksums"][SESSION_SCORER]
    assert verify(session_repository, SESSION, 1) == []


def test_triton_serves_recsys_c_from_the_session_scorers_external_weights(
    session_repository: Path, session_run: Path
) -> None:
    run = load_session_run(session_run)
    model = run.model
    users = np.flatnonzero((model.user_sequences >= 0).any(axis=1))[:20]
    indptr, indices = recent_plays(model.user_sequences, SESSION_LENGTH, model.n_items)
    expected_items, expected_scores = model.recommend_sequences(padded_rows(indptr, indices, users, SESSION_LENGTH), 10)
    with TritonServer(TritonConfig(model_repository=session_repository, ports=TritonPorts.auto())) as triton:
        assert load_all(triton, session_repository) == {"session": 1}
        client = TritonRecommender(triton.urls.grpc)
        try:
            answers = client.recommend(ENSEMBLE_C, [str(u) for u in run.user_ids[users].tolist()], top_k=10)
        finally:
            client.close()
    for row, answer in enumerate(answers):
        assert answer.item_ids == [str(i) for i in run.item_ids[expected_items[row]].tolist()]
        np.testing.assert_allclose(answer.scores, expected_scores[row], atol=1e-5)
        assert not answer.fallback
        assert answer.model_version == 1
