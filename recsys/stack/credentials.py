"""The local stack's generated secrets (the database password, the writer's intake token): one random value per
file, created once with mode 0600 (only the user running the stack reads it), read back on every start so the
servers and their clients agree across restarts. Nothing secret is ever committed or passed on a command line
(``/proc/<pid>/cmdline`` is world-readable; a process's environment is not)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from recsys.stack.process import ServiceError


def stack_secret(path: Path) -> str:
    """The secret kept in ``path``, made (URL-safe, 256 bits) if the file does not exist yet."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    except OSError as exc:
        raise ServiceError(f"cannot read the secret {path}: {exc.strerror}") from None
    if value:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # a copy made with looser permissions is tightened before use
        return value
    value = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        # A stale .tmp (an interrupted start, or planted: a link, a file readable by others) is removed, and the new
        # one made with O_EXCL: an existing file would keep its own mode, which O_CREAT's 0600 does not change.
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:  # FileExistsError: another start is making it at this instant
        raise ServiceError(f"cannot write the secret {path}: {exc.strerror}") from None
    return value


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802/7677), so the password itself never reaches
    the server, its logs or a command line: ``ALTER ROLE ... PASSWORD '<verifier>'`` stores it as given."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"
