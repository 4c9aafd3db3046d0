"""Confidence weighting against the formulas it implements."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.core.errors import ConfigError
from trainer.weighting import CorpusStats, confidence


@pytest.fixture
def plays() -> sp.csr_matrix:
    return sp.csr_matrix(np.array([[10.0, 0.0, 1.0], [0.0, 3.0, 100.0], [2.0, 0.0, 0.0]], dtype=np.float32))


def test_raw_and_log1p_keep_the_pattern(plays: sp.csr_matrix) -> None:
    np.testing.assert_array_equal(confidence(plays, "raw").toarray(), plays.toarray())
    np.testing.assert_allclose(confidence(plays, "log1p").data, np.log1p(plays.data), rtol=1e-6)
    assert confidence(plays, "log1p").nnz == plays.nnz


def test_bm25_matches_the_formula(plays: sp.csr_matrix) -> None:
    k1, b = 1.2, 0.75
    out = confidence(plays, "bm25", k1=k1, b=b).toarray()
    dense = plays.toarray()
    n_users = dense.shape[0]
    idf = np.log(n_users) - np.log1p((dense > 0).sum(axis=0))
    totals = dense.sum(axis=1)
    norm = (1 - b) + b * totals / totals.mean()
    for u, i in zip(*np.nonzero(dense), strict=True):
        expected = max(dense[u, i] * (k1 + 1) / (k1 * norm[u] + dense[u, i]) * idf[i], 0.0)
        assert out[u, i] == pytest.approx(expected, rel=1e-5)


def test_bm25_with_training_stats_weights_a_new_row_like_training(plays: sp.csr_matrix) -> None:
    stats = CorpusStats.of(plays)
    full = confidence(plays, "bm25", stats=stats).toarray()
    row = confidence(plays[1], "bm25", stats=stats).toarray()
    np.testing.assert_allclose(row[0], full[1], rtol=1e-6)


def test_unknown_scheme_is_refused(plays: sp.csr_matrix) -> None:
    with pytest.raises(ConfigError, match="unknown weighting 'tfidf'"):
        confidence(plays, "tfidf")
