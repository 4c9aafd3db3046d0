"""Locate the ``tritonserver`` 2.51 that ``nvidia-pytriton`` bundles and lay out its python backend, without
importing pytriton (nothing of it runs in this process)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from recsys.stack.triton.config import DEFAULT_WORKDIR, TritonServerError

__all__ = ["STUB_NAME", "LinkMode", "TritonInstall", "check_runnable", "find_tritonserver"]

LinkMode = Literal["symlink", "copy"]
STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstall:
    """The bundled server binary and what it needs to run: a backend directory and the library search path."""

    binary: Path
    #: ``--backend-directory``: holds ``python/`` with the backend library, its utils module and the stub
    backend_dir: Path
    #: ``--cache-directory`` (response cache implementations)
    cache_dir: Path
    #: ``nvidia_pytriton.libs``: the server's own shared libraries
    libs_dir: Path
    #: holds ``libpython3.X.so.1.0``, which the stub links to
    python_libdir: Path
    #: first on PATH: the stub runs the Python found there, so model.py sees this environment's packages
    python_bin_dir: Path
    pytriton_version: str

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        # Requests are tiny: OpenBLAS's worker threads only spin. Measured under load with the lookup's live
        # fold-in (np.linalg.solve per refold): Triton's CPU per request 1.66 ms with them, 0.47 ms without.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env["PATH"] = os.pathsep.join(p for p in (str(self.python_bin_dir), env.get("PATH", "")) if p)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.libs_dir), str(self.python_libdir), env.get("LD_LIBRARY_PATH", "")) if p
        )
        return env


def find_tritonserver(workdir: Path = DEFAULT_WORKDIR, *, link: LinkMode = "symlink") -> TritonInstall:
    """Locate the server inside the installed ``pytriton`` package and lay out its python backend under
    ``workdir/backends/python`` (idempotent; safe when several processes do it at once).

    ``link="symlink"`` (default) follows the installed package; ``"copy"`` makes a backend dir that outlives it.
    """
    spec = importlib.util.find_spec("pytriton")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(
            "the Triton server comes with the 'nvidia-pytriton' package, which is not installed: "
            "pip install -e . (it is a dependency of this project; Linux x86-64, glibc >= 2.35)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    dist = package / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    backend_src = dist / "backends" / "python"
    py_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / py_version / STUB_NAME
    libs_dir = package.parent / "nvidia_pytriton.libs"
    for needed in (binary, backend_src / "libtriton_python.so", backend_src / "triton_python_backend_utils.py"):
        if not needed.is_file():
            raise TritonServerError(f"incomplete nvidia-pytriton install: {needed} is missing (reinstall it)")
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").glob("*"))
        raise TritonServerError(f"nvidia-pytriton has no python backend stub for Python {py_version} (has {have})")

    python_libdir = Path(str(sysconfig.get_config_var("LIBDIR") or ""))
    soname = str(sysconfig.get_config_var("INSTSONAME") or f"libpython{py_version}.so.1.0")
    if not (python_libdir / soname).exists():
        raise TritonServerError(
            f"the python backend stub links to {soname}, which is not in {python_libdir}: "
            "this Python was built without --enable-shared"
        )

    backend_dir = workdir.absolute() / "backends"
    target = backend_dir / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src, name in (
        (backend_src / "libtriton_python.so", "libtriton_python.so"),
        (backend_src / "triton_python_backend_utils.py", "triton_python_backend_utils.py"),
        (stub, STUB_NAME),
    ):
        _place(src, target / name, link)
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return TritonInstall(
        binary=binary,
        backend_dir=backend_dir,
        cache_dir=dist / "caches",
        libs_dir=libs_dir,
        python_libdir=python_libdir,
        python_bin_dir=Path(sys.executable).parent,  # not resolved: a venv's bin/, not the base interpreter's
        pytriton_version=version,
    )


def _place(src: Path, dst: Path, link: LinkMode) -> None:
    """Make ``dst`` a symlink to / a copy of ``src`` unless it already is one; atomic via ``os.replace``."""
    if link == "symlink":
        if dst.is_symlink() and Path(os.readlink(dst)) == src:
            return
    elif not dst.is_symlink() and dst.is_file():
        have, want = dst.stat(), src.stat()
        if have.st_size == want.st_size and have.st_mtime_ns == want.st_mtime_ns:
            return
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}")
    if link == "symlink":
        tmp.symlink_to(src)
    else:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def check_runnable(install: TritonInstall, timeout_s: float = 30.0) -> None:
    """Raise ``TritonServerError`` unless the binary loads and runs here (``tritonserver --help``)."""
    try:
        done = subprocess.run(
            [str(install.binary), "--help"],
            env=install.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TritonServerError(f"cannot run {install.binary}: {exc}") from exc
    output = done.stdout + done.stderr
    if "Usage: tritonserver" not in output:
        raise TritonServerError(f"{install.binary} does not run here (exit {done.returncode}): {output.strip()[-800:]}")
