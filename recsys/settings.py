"""The one configuration system: typed settings from ``RECSYS_*`` environment variables (or a ``.env`` file).

Command-line options override these per call; nothing reads the environment anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainer.errors import ConfigError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", env_file=".env", extra="ignore")

    runs_dir: Path = Field(Path("runs"), description="where `recsys train` writes runs by default")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    seed: int = Field(42, description="seed of splits and samplers")
    log_level: LogLevel = "INFO"
    progress: bool = Field(True, description="draw progress bars on long work")
    model_repository: Path = Field(Path("triton_models"), description="Triton model repository that publish writes")
    triton_host: str = Field("127.0.0.1", description="address the local Triton binds to")
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002


def get_settings() -> Settings:
    """A fresh read of the environment; tests build their own ``Settings`` instead of patching globals."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"RECSYS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad setting: {problems}") from None
