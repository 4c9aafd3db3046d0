"""The one configuration system: typed settings from ``RECSYS_*`` environment variables (or a ``.env`` file).

Command-line options override these per call. The project's Python processes read their settings here, with two
exceptions and two pass-throughs (a test finds every ``os.environ`` and checks it is named below):

* ``serving.models.Lookup`` reads ``RECSYS_DATABASE_URL`` with ``os.environ`` inside Triton's python stub, where
  serving/ imports numpy only (no pydantic, never this package); the same variable as ``database_url``, but a
  ``.env`` file is not read there: set it in Triton's environment.
* ``serving.liveness`` (the Triton pod's liveness probe, standard library only, run inside Triton's image) reads
  ``RECSYS_TRITON_HTTP_PORT`` and ``RECSYS_TRITON_API_KEY``: the same variables as ``triton_http_port`` and
  ``triton_api_key``.
* ``recsys.stack`` and ``benchmarks`` copy ``os.environ`` into the processes they start (adding their own
  ``RECSYS_*`` values), and the stack passes ``RECSYS_LOG_LEVEL`` on as it found it; they interpret nothing else.

Other variables are third-party knobs (``OPENBLAS_NUM_THREADS`` for Triton's stubs, ``PATH``), not settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.core.errors import ConfigError
from recsys.core.limits import MAX_TOP_K

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", env_file=".env", extra="ignore")

    runs_dir: Path = Field(Path("runs"), description="where `recsys train` writes runs by default")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    seed: int = Field(42, description="seed of splits and samplers")
    log_level: LogLevel = "INFO"
    progress: bool = Field(True, description="draw progress bars on long work")
    model_repository: Path = Field(
        Path("runs/model_repository"),
        description="runtime model repository: what publish writes, serve triton serves (triton_models/ is source)",
    )
    triton_host: str = Field("127.0.0.1", description="address the local Triton binds to")
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    triton_url: str = Field("", description="Triton gRPC host:port the gateway calls; empty = triton_host:grpc port")
    triton_api_key: SecretStr = Field(
        SecretStr(""),
        description="key of Triton's restricted APIs (all but health): every client sends it (the local stack "
        "generates one; a Secret on Kubernetes); empty = the server is unrestricted",
    )
    # the local stack (recsys stack up): its other ports are the ones above and below; PostgreSQL's is the one of
    # database_url
    stack_dir: Path = Field(Path(".cache/stack"), description="the local stack's logs, configs and state file")
    postgres_dir: Path | None = Field(None, description="the local stack's PostgreSQL data folder (default: own)")
    nginx_port: int = Field(8088, description="the local stack's NGINX (the public edge)")
    prometheus_port: int = Field(9090, description="the local stack's Prometheus (stack up --prometheus)")
    # gateway
    gateway_host: str = Field("127.0.0.1", description="address the gateway binds (0.0.0.0 in containers)")
    gateway_port: int = Field(8080, description="gateway REST port")
    gateway_grpc_port: int = Field(50051, description="gateway gRPC port (service recsys.v1.Recommender)")
    triton_timeout_ms: int = Field(500, gt=0, description="deadline of one Triton call from the gateway")
    triton_max_in_flight: int = Field(
        2, ge=1, description="Triton calls a gateway keeps in flight; requests arriving meanwhile share the next call"
    )
    default_top_k: int = Field(10, ge=1)
    max_top_k: int = Field(
        MAX_TOP_K, ge=1, le=MAX_TOP_K, description=f"largest top_k accepted (at most the served models' {MAX_TOP_K})"
    )
    max_body_bytes: int = Field(16384, gt=0, description="largest request body the gateway reads")
    max_header_bytes: int = Field(
        32768, ge=1024, description="largest request line + headers the gateway reads (431 past it)"
    )
    read_timeout_s: float = Field(
        10.0, gt=0, description="a request must arrive whole this soon after its connection opened (408, closed)"
    )
    keep_alive_s: int = Field(5, ge=1, description="an idle keep-alive connection to the gateway closes after this")
    experiment_file: Path = Field(Path("gateway/experiment.yaml"), description="A/B groups -> models and shares")
    experiment: str = Field("", description="inline experiment config (YAML/JSON); wins over experiment_file")
    # feedback writer
    feedback_url: str = Field("http://127.0.0.1:8090", description="where the gateway sends impressions/feedback")
    feedback_timeout_s: float = Field(2.0, gt=0, description="how long the gateway waits for the writer's ack")
    feedback_token: SecretStr = Field(
        SecretStr(""),
        description="shared token of the writer's intake: the writer requires it on every POST, the gateway sends "
        "it (the local stack generates one; a Secret on Kubernetes); unset, the writer refuses every event",
    )
    feedback_host: str = "127.0.0.1"
    feedback_port: int = 8090
    database_url: SecretStr = Field(
        SecretStr("postgresql://recsys@127.0.0.1:5433/recsys"), description="PostgreSQL the writer and reports use"
    )
    spool_dir: Path = Field(Path(".cache/feedback-spool"), description="the writer's durable queue of accepted events")
    write_batch_size: int = Field(2000, gt=0, description="events per database write")
    write_interval_ms: int = Field(50, gt=0, description="longest wait before a partial batch is written")
    # the training loop (recsys retrain)
    loop_dir: Path = Field(Path("runs/loop"), description="where the loop writes its runs (retrains, new items)")
    catalogue_min_listeners: int = Field(
        3, ge=1, description="distinct listeners whose plays let an unseen item into the catalogue"
    )
    catalogue_max_plays: float = Field(5.0, ge=1, description="one listener's plays of a new item count at most this")
    retrain_window_minutes: float = Field(15.0, gt=0, description="newest log held out to gate a retrain on")
    retrain_tolerance: float = Field(0.02, ge=0, lt=1, description="relative NDCG@10 a candidate may lose")
    retrain_min_users: int = Field(20, ge=1, description="listeners with new plays needed to judge a candidate")
    # the approximate factor scorer (recsys_scorer_ann, built by recsys publish: trainer.ann)
    ann_kind: Literal["inherit", "auto", "none", "flat", "ivf_flat", "hnsw"] = Field(
        "inherit",
        description="index publish builds: inherit = the policy the newest version was published with (auto for "
        "the first); auto = none below ann_threshold_items, hnsw from it on; none = never; flat (exhaustive), "
        "ivf_flat or hnsw = that kind whatever the catalogue's size",
    )
    ann_threshold_items: int = Field(1_000_000, ge=0, description="catalogue size from which auto builds hnsw")
    ann_min_recall: float = Field(
        0.95, ge=0, le=1, description="recall@10 vs the exact top-10 below which publish refuses the index"
    )
    ann_sample_users: int = Field(1000, ge=1, description="users per recall sample (one tunes, one gates)")

    @property
    def triton_grpc_url(self) -> str:
        return self.triton_url or f"{self.triton_host}:{self.triton_grpc_port}"


def get_settings() -> Settings:
    """A fresh read of the environment; tests build their own ``Settings`` instead of patching globals."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"RECSYS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad setting: {problems}") from None
