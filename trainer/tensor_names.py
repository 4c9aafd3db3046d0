"""Tensor names and limits of the served models: the contract between export, the Triton configs and every client.

Dependency-free on purpose: the gateway image imports it without torch, scipy or numba.
"""

# Scorer step (exported TorchScript / ONNX module).
USER_VECTOR = "USER_VECTOR"  # float32 [B, D + 1]; from the lookup: a user's row, a live fold-in, or the fallback
EXCLUDE = "EXCLUDE"  # int64 [B, H]; item indices to leave out, padded with -1
TOP_K = "TOP_K"  # int64 [B, 1]; the batch returns max(TOP_K) items per row
SCORES = "SCORES"  # float32 [B, K]
ITEMS = "ITEMS"  # int64 [B, K]; item indices, -1 where fewer than K items remain

# Public tensors of the ensembles (what gRPC clients send and receive).
USER_ID = "USER_ID"
ITEM_IDS = "ITEM_IDS"
FALLBACK = "FALLBACK"
MODEL_VERSION = "MODEL_VERSION"

MAX_BATCH_SIZE = 64
MAX_TOP_K = 1000
