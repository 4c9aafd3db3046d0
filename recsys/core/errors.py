"""The project's one exception tree: every error raised on purpose is a :class:`RecsysError`.

    RecsysError
    ├── DataError                input data is missing, malformed or empty (user's fault: one-line message)
    ├── ConfigError              an option, setting or hyperparameter is out of range
    ├── ArtifactError            a saved model directory is missing a file or is from an unknown format
    ├── QualityGateError         a run is worse than its own popularity baseline: `recsys publish` refuses it
    ├── TritonCallError          (recsys.core.triton_client) an inference call failed; keeps Triton's status code
    ├── ExportError              (trainer.exporting) weights or exports fail their checks; nothing is published
    ├── TrainingDivergedError    (trainer.models.gru4rec) the loss became NaN or infinite
    ├── GatewayError             (gateway.service) a request the gateway cannot answer; ``kind``: 400, 409, 503
    ├── WriterUnavailableError   (gateway.events) the feedback writer did not acknowledge in time
    ├── WriterRejectedError      (gateway.events) the feedback writer refused an event as invalid
    │   └── WriterConflictError  (gateway.events) it holds the event's event_id with other content (409)
    ├── SpoolUnavailableError    (feedback.spool) the writer's spool cannot write (full disk): 503 + Retry-After
    ├── ReportError              (feedback.report; also a ValueError) the A/B report's input cannot give a report
    ├── ServiceError             (recsys.stack.process) a local service cannot be started or reached
    │   ├── NotReadyError        (recsys.stack.process) it did not become ready in time
    │   ├── PortInUseError       (recsys.stack.ports) a port it needs is taken (named with what holds it)
    │   ├── StackStateError      (recsys.stack.state) a stack already runs there, or its state file is unreadable
    │   └── TritonServerError    (recsys.stack.triton) the local Triton cannot be found, started or reached
    ├── PromtoolError            (recsys.monitoring.prometheus) promtool is missing or rejected a file
    ├── LogUnreadableError       (recsys.loop.items) the feedback log cannot be read; the served version stays
    ├── RecordError              (recsys.loop.records) a loop cycle ran but could not be recorded
    ├── AwsError                 (scripts.aws) an AWS helper failed (botocore's errors translated at the boundary)
    └── PerfAnalyzerError        (benchmarks.harness.perf_analyzer) perf_analyzer is missing or failed

Subclasses live in their own packages and import this root; the kernel imports none of them. The CLI prints
``str(exc)`` for these and exits with status 2; anything else is a bug and keeps its traceback.

Outside the tree on purpose: ``serving.stub.BadRequest`` (a ValueError), the answer to one malformed request
inside a Triton stub, where ``serving/`` imports numpy only and never ``recsys``. A test
(``tests/test_exception_tree.py``) imports every module and fails on any other exception class outside the tree
or missing from this drawing.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Base of every error the project raises deliberately."""


class DataError(RecsysError):
    """Input data cannot be used as given."""


class ConfigError(RecsysError):
    """An option or hyperparameter is invalid."""


class ArtifactError(RecsysError):
    """A saved model directory cannot be read."""


class QualityGateError(RecsysError):
    """A run is worse than its own popularity baseline, so it is not published (unless forced)."""
