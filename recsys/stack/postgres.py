"""A local PostgreSQL cluster for the stack and the tests: the Debian package's binaries, a data folder of our
own, loopback only, on its own port (5433), so it never touches a system cluster. The server runs in the
foreground under the stack's supervisor (``recsys.stack.process``), like every other server; a cluster already
running on the data folder (started elsewhere) is used as it is and stopped with ``pg_ctl``.

initdb refuses to run as root, so as root every server command runs as the ``postgres`` user (``runuser``) on a
folder that user owns; that folder must sit where ``postgres`` can reach it, so as root it lives under
``/var/tmp`` unless told otherwise. Authentication is ``trust`` for 127.0.0.1 only: a development cluster on
loopback; deployed clusters take their credentials from a secret (see k8s/).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from recsys.stack.process import ServiceError, ServiceProcess, tail

DEFAULT_PORT = 5433
DATABASE = "recsys"
ROLE = "recsys"
#: ``pg_ctl stop -m`` modes as the postmaster's signals
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def find_bin_dir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise ServiceError("PostgreSQL is not installed (apt-get install postgresql; scripts/lib/bootstrap.sh does it)")


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/tmp/recsys-postgres")
    return Path(".cache/postgres").resolve()


@dataclass
class LocalPostgres:
    data_dir: Path
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    _server: ServiceProcess | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}@{self.host}:{self.port}/{DATABASE}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(find_bin_dir() / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise ServiceError(f"{args[0]} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
        return result

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Creates the cluster once (idempotent)."""
        if self.initialized():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (self.data_dir.parent, self.data_dir):
                if path == self.data_dir or not any(path.iterdir()):
                    os.chown(path, user.pw_uid, user.pw_gid)
            self.data_dir.chmod(0o700)
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                f"\n# recsys local stack (address and port are given at start)\n"
                f"unix_socket_directories = '{self.data_dir}'\nfsync = on\nsynchronous_commit = on\n"
            )

    def is_running(self) -> bool:
        if self._server is not None and self._server.is_running():
            return True
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def start(self, timeout_s: float = 60.0) -> Self:
        self.init()
        if not self.is_running():
            log = self.log_path
            if os.geteuid() == 0 and not log.exists():
                log.touch()
                user = pwd.getpwnam("postgres")
                os.chown(log, user.pw_uid, user.pw_gid)
            as_postgres = os.geteuid() == 0  # initdb made the folder theirs; the server must run as them too
            command = [str(find_bin_dir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                       "-c", f"listen_addresses={self.host}"]  # fmt: skip
            self._server = ServiceProcess(
                "postgresql",
                command,
                log_path=log,
                ready=self._accepting,
                stop_signal=STOP_SIGNALS["fast"],
                signal_group=False,  # the postmaster shuts its backends down itself
                stop_timeout_s=60.0,
                user="postgres" if as_postgres else None,
                group="postgres" if as_postgres else None,
            ).start(timeout_s)
        self._wait_accepting(timeout_s)
        self._ensure_database()
        return self

    def _psql(self, sql: str, database: str = "postgres") -> str:
        result = self._run(
            "psql", "-h", self.host, "-p", str(self.port), "-U", "postgres", "-d", database, "-tAc", sql, check=False
        )
        if result.returncode != 0:
            raise ServiceError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _accepting(self) -> bool:
        return self._run("pg_isready", "-h", self.host, "-p", str(self.port), check=False).returncode == 0

    def _wait_accepting(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._accepting():
            if time.monotonic() > deadline:
                raise ServiceError(f"PostgreSQL not accepting connections on {self.port}:\n{tail(self.log_path)}")
            time.sleep(0.1)

    def _ensure_database(self) -> None:
        if self._psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'") != "1":
            self._psql(f"CREATE ROLE {ROLE} LOGIN")
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'") != "1":
            self._psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")

    def stop(self, mode: str = "fast") -> None:
        """Shut down in ``pg_ctl``'s ``mode`` (smart, fast or immediate); SIGKILL after 60 s."""
        if mode not in STOP_SIGNALS:
            raise ValueError(f"stop mode must be one of {sorted(STOP_SIGNALS)}, not {mode!r}")
        server, self._server = self._server, None
        if server is not None and server.is_running():
            server.stop_signal = STOP_SIGNALS[mode]
            server.stop()
        elif self.initialized() and self.is_running():  # a cluster started elsewhere on our folder
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def reset_database(self) -> None:
        """Drops and recreates the database (tests start from an empty schema)."""
        self._psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        self._ensure_database()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
