"""File names inside a run directory. Dependency-free on purpose: the served steps import it without torch."""

MODEL_FILE = "model.npz"
IDS_FILE = "ids.npz"
HISTORY_FILE = "history.npz"
METRICS_FILE = "metrics.json"
# Exports inside a published version folder.
TORCHSCRIPT_FILE = "model.pt"
ONNX_FILE = "model.onnx"
USERS_FILE = "users.npy"  # the lookup's user vectors (FactorScorer's user side), float32 [n_users + 1, D + 1]
FOLD_IN_FILE = "fold_in.npz"  # ALS only: item factors, Gram matrix and weighting for the live fold-in
