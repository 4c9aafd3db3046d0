"""A local PostgreSQL cluster for the stack and the tests: the Debian package's binaries, a data folder of our
own, loopback only, on its own port (5433), so it never touches a system cluster. The server runs in the
foreground under the stack's supervisor (``recsys.stack.process``), like every other server; a cluster already
running on the data folder (started elsewhere) is used as it is and stopped with ``pg_ctl``.

initdb refuses to run as root, so as root every server command runs as the ``postgres`` user (``runuser``) on a
folder that user owns; that folder must sit where ``postgres`` can reach it, so as root it lives under
``/var/tmp`` unless told otherwise.

Who may connect (``pg_hba.conf``, rewritten at every start, so a cluster made by an older version is brought in
line): over TCP (127.0.0.1 only) the ``recsys`` role with its password, by SCRAM-SHA-256, and nobody else (the
superuser has no password); the superuser only over the Unix socket, which lives in the data folder (mode 0700),
by peer authentication of the cluster's owner. The password is generated once into ``<data folder>.password``
(mode 0600, beside the folder: initdb wants the folder empty) and read back to build :attr:`LocalPostgres.url`;
the server receives only its SCRAM verifier. Before this, ``trust`` on TCP let any local user in as superuser
(``COPY ... TO PROGRAM`` then runs commands as ``postgres``). Deployed clusters take their credentials from a
Secret (see k8s/).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from recsys.stack.credentials import scram_verifier, stack_secret
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


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def password_file(data_dir: Path) -> Path:
    """Where the ``recsys`` role's generated password of the cluster in ``data_dir`` is kept (mode 0600)."""
    return data_dir.parent / f"{data_dir.name}.password"


def with_local_password(url: str, data_dir: Path | None = None) -> str:
    """``url`` with the local stack's generated password filled in when it names a loopback PostgreSQL without
    one and this user can read the stack's password file (so ``recsys ab-report`` and friends reach the stack
    with the default RECSYS_DATABASE_URL); any other URL unchanged."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None or parts.hostname not in LOOPBACK or not parts.username:
        return url
    path = password_file(data_dir or default_data_dir())
    try:
        password = path.read_text().strip()
    except OSError:
        return url
    host = parts.netloc.rpartition("@")[2]
    credentials = f"{parts.username}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{credentials}@{host}"))


@dataclass
class LocalPostgres:
    data_dir: Path
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    _server: ServiceProcess | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def url(self) -> str:
        """The ``recsys`` role's URL, password included (made on first use): keep it out of logs and argv."""
        credentials = f"{ROLE}:{self.password}"
        return f"postgresql://{credentials}@{self.host}:{self.port}/{DATABASE}"

    @property
    def password_path(self) -> Path:
        return password_file(self.data_dir)

    @property
    def display_url(self) -> str:
        """The URL to print: the password stays in its file."""
        return f"postgresql://{ROLE}@{self.host}:{self.port}/{DATABASE} (password in {self.password_path})"

    @property
    def password(self) -> str:
        return stack_secret(self.password_path)

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _run(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [str(find_bin_dir() / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
        result = subprocess.run(command, capture_output=True, text=True, check=False, **feed)
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
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth-local=peer",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")  # fmt: skip
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

    def _owner(self) -> str:
        """The OS user the server runs as (and who alone may use its socket as the superuser)."""
        return pwd.getpwuid(self.data_dir.stat().st_uid).pw_name

    def write_access_rules(self) -> bool:
        """Writes pg_hba.conf and pg_ident.conf (see the module's docstring); True when they changed."""
        hba = (
            "# recsys local stack (recsys.stack.postgres writes this file at every start)\n"
            "# superuser: only the cluster's owner, over the socket in the data folder (mode 0700)\n"
            "local all postgres peer map=owner\n"
            "# over TCP (loopback only): password roles by SCRAM-SHA-256 (the superuser has no password)\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        ident = f"# recsys local stack: the cluster's owner is its superuser\nowner {self._owner()} postgres\n"
        changed = False
        for name, text in (("pg_hba.conf", hba), ("pg_ident.conf", ident)):
            path = self.data_dir / name
            if path.read_text() != text:
                path.write_text(text)  # keeps the file's owner and mode (initdb's, 0600)
                changed = True
        return changed

    def start(self, timeout_s: float = 60.0) -> Self:
        self.init()
        changed = self.write_access_rules()
        if self.is_running():
            if changed:  # a cluster started elsewhere (by an older version) adopts the rules now
                self._run("pg_ctl", "-D", str(self.data_dir), "reload")
        else:
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
        """Runs ``sql`` as the superuser over the socket (fed on stdin: never on a command line)."""
        result = self._run(
            "psql", "-X", "-h", str(self.data_dir), "-p", str(self.port), "-U", "postgres", "-d", database,
            "-v", "ON_ERROR_STOP=1", "-tAq", "-f", "-", check=False, stdin=sql,
        )  # fmt: skip
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
        # the password file and the role agree at every start (a new file, or a cluster made before passwords)
        self._psql(f"ALTER ROLE {ROLE} WITH LOGIN NOSUPERUSER PASSWORD '{scram_verifier(self.password)}'")
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
