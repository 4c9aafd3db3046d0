"""The tensor contract of everything Triton serves: names, limits and the files of a published version.

One place for what export, the Triton configs, the served steps and every client must agree on; a test checks
that every ``config.pbtxt`` uses these names. Dependency-free on purpose: the gateway imports it too.
"""

from typing import Final

# ---------------------------------------------------------------------------------------------- public tensors
# What gRPC clients send to and receive from every ensemble (recsys_a, recsys_b, recsys_c, ...).
USER_ID: Final = "USER_ID"  # bytes [B, 1]: the external listener id
TOP_K: Final = "TOP_K"  # int64 [B, 1]; a batch returns max(TOP_K) items per row, each request its own k
ITEM_IDS: Final = "ITEM_IDS"  # bytes [B, K]: external item ids, "" where fewer than K items remain
SCORES: Final = "SCORES"  # float32 [B, K]
FALLBACK: Final = "FALLBACK"  # bool [B, 1]: the listener got the popularity fallback
MODEL_VERSION: Final = "MODEL_VERSION"  # int64 [B, 1]: the version that answered

# ------------------------------------------------------------------------------------- between the steps
USER_VECTOR: Final = "USER_VECTOR"  # float32 [B, D + 1]: a user's row, a live fold-in, or the fallback row
EXCLUDE: Final = "EXCLUDE"  # int64 [B, H]: item indices to leave out, padded with -1
ITEM_SEQUENCE: Final = "ITEM_SEQUENCE"  # int64 [B, L]: recent item indices, oldest first, right-padded with -1
ITEMS: Final = "ITEMS"  # int64 [B, K]: item indices, -1 where fewer than K items remain
PAD: Final = -1  # padding in EXCLUDE, ITEM_SEQUENCE and ITEMS

# ----------------------------------------------------------------------------------------------- limits
MAX_BATCH_SIZE: Final = 64
MAX_TOP_K: Final = 1000
SEQUENCE_LENGTH: Final = 50  # the served L of ITEM_SEQUENCE (GRU4Rec's default max_sequence_length)

# ------------------------------------------------------------------------------ files of a run directory
MODEL_FILE: Final = "model.npz"
IDS_FILE: Final = "ids.npz"
HISTORY_FILE: Final = "history.npz"
METRICS_FILE: Final = "metrics.json"

# ----------------------------------------------------------------- files inside a published version folder
TORCHSCRIPT_FILE: Final = "model.pt"
ONNX_FILE: Final = "model.onnx"
USERS_FILE: Final = "users.npy"  # the lookup's user rows, float32 [n_users + 1, D + 1]
FOLD_IN_FILE: Final = "fold_in.npz"  # ALS only: item factors, Gram matrix and weighting for the live fold-in
SEQUENCES_FILE: Final = "sequences.npz"  # session lookup: CSR indptr/indices of each listener's recent plays
ANN_INDEX_FILE: Final = "ann.faiss"  # the approximate scorer's FAISS index over the item rows [n_items, D + 1]
ANN_FILE: Final = "ann.npz"  # its search settings and the popularity order the fallback rows are answered from
MANIFEST_FILE: Final = "publish.json"  # what was published, from which run, with which parity figures
MODEL_CODE_FILE: Final = "model.py"
CONFIG_FILE: Final = "config.pbtxt"

# ------------------------------------------------------------------------------------- Triton's API key
KEY_HEADER: Final = "recsys-triton-key"  # the HTTP header a keyed Triton checks (recsys.core.triton_key)
GRPC_PREFIX: Final = "triton-grpc-protocol-"  # what Triton 2.51 prefixes to it in gRPC metadata

# ------------------------------------------------------------------------------------------- metrics
RECALL_METRIC: Final = "recsys_ann_recall_at_10"  # gauge {model, version} on :8002 (AnnScorerModel)
