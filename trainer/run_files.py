"""File names inside a run directory. Dependency-free on purpose: the served steps import it without torch."""

MODEL_FILE = "model.npz"
IDS_FILE = "ids.npz"
HISTORY_FILE = "history.npz"
METRICS_FILE = "metrics.json"
# Exports inside a published version folder.
TORCHSCRIPT_FILE = "model.pt"
ONNX_FILE = "model.onnx"
