"""What an image would hold, without Docker: the files a Dockerfile stage COPYs from the build context, laid out
under a folder that stands for the image's ``/``, and a Python that can import only those files plus the
distributions of a requirements list (and what they depend on)."""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from deploy_support import ROOT

#: The project's own top-level packages: importable in an image only where the Dockerfile copied them.
FIRST_PARTY = ("recsys", "trainer", "serving", "gateway", "feedback", "scripts", "benchmarks")

#: Run by the image's stand-in Python. argv: first-party tops, requirements file, then one of
#: ``import:mod,mod`` (import them), ``run:module arg...`` (``python -m module arg...``) or ``code:python source``.
#: Imports outside the requirements' closure raise ImportError; the checkout's editable install is switched off,
#: so first-party code comes only from the laid-out image. At exit it prints ``LOADED`` and the watched modules
#: that were imported (watched: argv[4], comma-separated).
GUARD = textwrap.dedent(
    """
    import atexit, importlib, importlib.abc, importlib.metadata as md, re, runpy, sys
    from packaging.requirements import Requirement

    first_party, requirements, action, watched = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4]
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
    sys.path_importer_cache.clear()

    def closure(lines):
        seen, todo = set(), [Requirement(l) for l in lines]
        while todo:
            req = todo.pop()
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            key = (name, tuple(sorted(req.extras)))
            if key in seen:
                continue
            seen.add(key)
            try:
                dist = md.distribution(req.name)
            except md.PackageNotFoundError:
                sys.exit(f"MISSING {req.name}")
            for spec in dist.requires or []:
                sub = Requirement(spec)
                envs = [{"extra": e} for e in req.extras] or [{"extra": ""}]
                if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                    todo.append(sub)
        return {name for name, _ in seen}

    lines = [l.split("#")[0].strip() for l in open(requirements)]
    allowed = closure([l for l in lines if l])
    owners = md.packages_distributions()

    class Guard(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            top = fullname.split(".")[0]
            if "." in fullname or top in sys.stdlib_module_names or top in first_party:
                return None
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(top, [])}
            if dists and not dists & allowed:
                raise ImportError(f"{top} ({', '.join(sorted(dists))}) is not in {requirements}")
            return None

    sys.meta_path.insert(0, Guard())
    watch = set(watched.split(","))
    atexit.register(lambda: print("LOADED", sorted({m.split(".")[0] for m in sys.modules} & watch), flush=True))
    kind, _, rest = action.partition(":")
    if kind == "import":
        for module in rest.split(","):
            importlib.import_module(module)
        print("OK", flush=True)
    elif kind == "run":
        module, *args = rest.split()
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        exec(compile(rest, "<RUN>", "exec"), {"__name__": "__main__"})
        print("OK", flush=True)
    """
)


@dataclass(frozen=True)
class Layout:
    root: Path  # stands for the image's /
    workdir: Path
    env: dict[str, str]  # the stage's ENV, paths under root

    def python(self, requirements: Path, action: str, *, watched: tuple[str, ...] = ()) -> list[str]:
        """The command line of a guarded Python for ``action`` (see :data:`GUARD`)."""
        first_party = ",".join(FIRST_PARTY)
        return [sys.executable, "-c", GUARD, first_party, str(requirements), action, ",".join(watched) or "-"]

    def process_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A clean environment: the stage's ENV (PYTHONPATH under root), then ``extra``; nothing of this process."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(self.workdir)}
        env |= {k: v for k, v in self.env.items() if k != "PYTHONPATH"}
        if "PYTHONPATH" in self.env:
            env["PYTHONPATH"] = os.pathsep.join(str(self.under(p)) for p in self.env["PYTHONPATH"].split(":"))
        return env | (extra or {})

    def under(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def run(
        self, requirements: Path, action: str, *, watched: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        command = self.python(requirements, action, watched=watched)
        return subprocess.run(
            command, cwd=self.workdir, env=self.process_env(), capture_output=True, text=True, timeout=120, check=False
        )


def lay_out(instructions: list[tuple[str, str]], into: Path) -> Layout:
    """Copies what a stage's COPY instructions take from the build context (not ``--from`` another stage) to where
    they land under ``into``, following WORKDIR as Docker does; reads the stage's ENV."""
    workdir, env = "/", dict[str, str]()
    for keyword, args in instructions:
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, args)
        elif keyword == "ENV":
            env |= {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', args)}
        elif keyword == "COPY" and "--from" not in args:
            *sources, dest = [a for a in args.split() if not a.startswith("--")]
            target = into / posixpath.join(workdir, dest).lstrip("/")
            for source in sources:
                path = ROOT / source
                if path.is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                    shutil.copytree(path, target, dirs_exist_ok=True, ignore=ignore)
                elif dest.endswith("/") or len(sources) > 1:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target / path.name)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
    work = into / workdir.lstrip("/")
    work.mkdir(parents=True, exist_ok=True)
    return Layout(into, work, env)
