"""The names ``benchmarks/gpu_triton.py`` imports from here, now in ``benchmarks.harness`` (perf_analyzer runs)
and ``recsys.stack.memory`` (process-tree memory); the other benchmarks import them from there."""

from benchmarks.harness.perf_analyzer import Measurement, PerfAnalyzer, PerfAnalyzerError, PerfRun, run_perf_analyzer
from recsys.stack.memory import TreeMemory, settled_tree_memory, tree_memory

__all__ = [
    "Measurement",
    "PerfAnalyzer",
    "PerfAnalyzerError",
    "PerfRun",
    "TreeMemory",
    "run_perf_analyzer",
    "settled_tree_memory",
    "tree_memory",
]
