"""The training loop on EKS: one run of the CronJob ``trainer`` (``python -m scripts.aws loop retrain``).

The loop itself (:mod:`recsys.loop`) works on a local model repository and hot-swaps through a
:class:`~trainer.triton.repository.ModelControl`. On EKS the repository is ``s3://BUCKET/triton`` and Triton runs
N replicas with explicit model control, so one run here:

1. **mirrors** the served version of each family (the newest uploaded one) from S3 into a local work repository:
   exactly the objects their manifests list, each checked against the manifest's size and SHA-256; and restores the
   factor version's training run from ``s3://BUCKET/runs/v<N>/`` (the warm start's base), pointing the mirrored
   ``publish.json`` at it (the path it names is a folder of the machine that published);
2. **reconciles** every Triton replica whose ensembles are not pinned to that version (one that failed a load in
   an earlier run, or a pod started since) by activating it there;
3. runs the loop's cycles (new items, then a gated retrain) against the mirror with :class:`EveryReplica` as the
   model control: before the first load of a version it uploads the run and then the version to S3 (manifest
   last), so a replica, which loads from S3, can only be asked for a complete version; then it forwards every load
   to every replica, retrying each a few times;
4. records each cycle (:func:`recsys.loop.records.record`), with the replicas that missed the swap named in its
   reason.

A replica that still fails after its retries is left out of the rest of that swap and keeps serving the previous
version (its ensembles stay pinned to it: a failed step load never touches them), the others go on, the cycle
stays ``promoted`` with the lagging replica named, the command exits 1, and the next run reconciles it. A version
that no replica could load is removed from S3 again: Triton pods start with ``--exit-on-error`` and load the newest
version, so leaving it there would crash-loop every pod that (re)starts.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol

from botocore.exceptions import ClientError

from recsys.core.errors import RecsysError
from recsys.loop.records import Cycle, RecordError, record
from recsys.stack.triton import TritonControl, TritonUrls
from scripts.aws import AwsError
from scripts.aws import s3_models as s3m
from serving.contract import MANIFEST_FILE
from trainer.triton.family import FACTOR, FAMILIES, Family
from trainer.triton.repository import activate, has_configs, version_ensembles, versions

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from recsys.loop.retrain import RetrainOptions
    from trainer.new_items import CatalogueRules

log = logging.getLogger(__name__)

#: Where each version's training run lives in the bucket (outside the Triton repository): ``runs/v<N>/<file>``
#: and its checksum manifest ``runs/v<N>.json``, written last.
from scripts.aws.names import RUN_PREFIX as RUN_PREFIX  # noqa: E402  (one name for CD, the policy and the loop)

Kind = Literal["items", "retrain"]


class Replica(Protocol):
    """One Triton replica's model control (:class:`HttpReplica`; a fake in the tests)."""

    def load_model(self, name: str, config: str | None = None) -> None: ...

    def ensemble_versions(self, name: str) -> set[int]: ...


# --- the mirror ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mirror:
    repository: Path
    served: dict[str, int]  # family name -> its newest uploaded version
    uploaded: frozenset[int]  # every version whose manifest exists
    run_dir: Path  # the factor version's restored run
    files: int  # objects downloaded


def served_versions(s3: S3Client, where: s3m.Location, uploaded: Iterable[int]) -> dict[str, int]:
    """Family name -> its newest uploaded version: the numbered folders of the family's first step that have a
    manifest (one listing per family instead of reading every manifest)."""
    complete = set(uploaded)
    served = {}
    for family in FAMILIES:
        prefix = where.key(family.steps[0]) + "/"
        numbers = set()
        try:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    name = common.get("Prefix", "")[len(prefix) :].strip("/")
                    if name.isdigit():
                        numbers.add(int(name))
        except ClientError as exc:
            raise AwsError(f"S3 listing of s3://{where.bucket}/{prefix}: {exc}") from exc
        held = numbers & complete
        if held:
            served[family.name] = max(held)
    return served


def _safe_path(root: Path, key: str) -> Path:
    relative = PurePosixPath(key)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise AwsError(f"manifest key {key!r} leaves the repository")
    return root.joinpath(*relative.parts)


def _download(s3: S3Client, bucket: str, key: str, entry: s3m.Entry, target: Path) -> None:
    """One object into ``target``, checked against the manifest's size and SHA-256 (a mismatch is an error: the
    loop must never warm-start from, or publish beside, files other than the manifest's)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        with target.open("wb") as out:
            for chunk in iter(lambda: body.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except ClientError as exc:
        raise AwsError(f"S3 download of s3://{bucket}/{key}: {exc}") from exc
    if size != entry.size or digest.hexdigest() != entry.sha256:
        target.unlink()
        raise AwsError(
            f"s3://{bucket}/{key}: {size} bytes, sha256 {digest.hexdigest()[:12]}..., its manifest says "
            f"{entry.size} bytes, {entry.sha256[:12]}..."
        )


def mirror(s3: S3Client, where: s3m.Location, repository: Path, runs: Path, *, run_prefix: str = RUN_PREFIX) -> Mirror:
    """Mirrors the served version of each family into ``repository`` (empty or missing) and restores the factor
    version's run under ``runs``; see the module docstring."""
    if repository.exists() and any(repository.iterdir()):
        raise AwsError(f"{repository}: the mirror needs an empty folder")
    uploaded = s3m.uploaded_versions(s3, where)
    if not uploaded:
        raise AwsError(f"{where.url}: no version uploaded yet (publish one: python -m scripts.aws loop seed RUN_DIR)")
    served = served_versions(s3, where, uploaded)
    if FACTOR.name not in served:
        raise AwsError(f"{where.url}: no {FACTOR.name} version uploaded (the loop retrains that family)")
    seen: set[str] = set()
    # Newest first: configs and ensemble placeholders as the newest upload that wrote them left them (an older
    # manifest may list a config rewritten since, with another checksum); an older manifest adds its own version
    # folders and the configs no newer one lists (a version CD published has only its own family's configs).
    for number in sorted({*served.values(), uploaded[-1]}, reverse=True):
        manifest = s3m.read_manifest(s3, where, number)
        if manifest is None:
            raise AwsError(f"{where.url}: the manifest of version {number} disappeared during the mirror")
        for entry in manifest.entries:
            if entry.key not in seen:
                _download(s3, where.bucket, where.key(entry.key), entry, _safe_path(repository, entry.key))
                seen.add(entry.key)
    count = len(seen)
    version = served[FACTOR.name]
    if version not in versions(repository, FACTOR):
        raise AwsError(f"{where.url}: version {version} of the {FACTOR.name} models is incomplete on S3")
    if not has_configs(repository, FACTOR):
        # publish would render them in the local flavour and the upload would replace the served ones with them
        raise AwsError(f"{where.url}: no manifest of a served version lists every {FACTOR.name} config")
    run_dir = runs / f"v{version}"
    count += _restore_run(s3, where.bucket, run_prefix, version, run_dir)
    for step in FACTOR.steps:
        path = repository / step / str(version) / MANIFEST_FILE
        if path.is_file():
            data = json.loads(path.read_text())
            data["run"] = str(run_dir.resolve())
            path.write_text(json.dumps(data, indent=2) + "\n")
    return Mirror(repository, served, frozenset(uploaded), run_dir, count)


def _run_manifest_key(run_prefix: str, version: int) -> str:
    return f"{run_prefix.strip('/')}/v{version}.json"


def _restore_run(s3: S3Client, bucket: str, run_prefix: str, version: int, run_dir: Path) -> int:
    key = _run_manifest_key(run_prefix, version)
    try:
        text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except ClientError as exc:
        if s3m._code(exc) in ("NoSuchKey", "404"):
            raise AwsError(
                f"version {version} has no training run at s3://{bucket}/{key}, so nothing to warm-start from "
                f"(attach it: python -m scripts.aws loop upload-run RUN_DIR --version {version})"
            ) from exc
        raise AwsError(f"S3: {exc}") from exc
    manifest = s3m.Manifest.from_json(text)
    for entry in manifest.entries:
        _download(s3, bucket, f"{run_prefix.strip('/')}/v{version}/{entry.key}", entry, _safe_path(run_dir, entry.key))
    return len(manifest.entries)


# --- uploads -------------------------------------------------------------------------------------------------


def upload_run(
    s3: S3Client, bucket: str, version: int, run_dir: Path, *, run_prefix: str = RUN_PREFIX, orphan: bool = False
) -> int:
    """Uploads the training run of ``version`` (every file of ``run_dir``) with its manifest, written last, and
    returns the number of files. Like versions, runs are immutable (the same content again is a no-op), except an
    ``orphan``: the run of a number with no version manifest (a version removed by a rollback, or an upload that
    died), which the next version of that number replaces."""
    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    if not files:
        raise AwsError(f"{run_dir}: no training run there")
    entries = tuple(s3m.Entry(p.relative_to(run_dir).as_posix(), p.stat().st_size, s3m.sha256_file(p)) for p in files)
    manifest = s3m.Manifest(version, entries)
    key = _run_manifest_key(run_prefix, version)
    try:
        try:
            existing = s3m.Manifest.from_json(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())
        except ClientError as exc:
            if s3m._code(exc) not in ("NoSuchKey", "404"):
                raise
            existing = None
        if existing is not None and not orphan:
            if existing == manifest:
                return len(entries)
            raise AwsError(f"s3://{bucket}/{key}: the run of version {version} exists with other content")
        for entry, path in zip(entries, files, strict=True):
            checksum = base64.b64encode(bytes.fromhex(entry.sha256)).decode()
            with path.open("rb") as body:
                s3.put_object(
                    Bucket=bucket, Key=f"{run_prefix.strip('/')}/v{version}/{entry.key}", Body=body,
                    ChecksumSHA256=checksum,
                )  # fmt: skip
        s3.put_object(Bucket=bucket, Key=key, Body=manifest.to_json().encode(), ContentType="application/json")
    except ClientError as exc:
        raise AwsError(f"S3 upload of the run of version {version}: {exc}") from exc
    return len(entries)


def _run_of(repository: Path, family: Family, version: int) -> Path:
    path = repository / family.steps[0] / str(version) / MANIFEST_FILE
    try:
        return Path(str(json.loads(path.read_text())["run"]))
    except (OSError, ValueError, KeyError) as exc:
        raise AwsError(f"{path}: no readable run path ({exc})") from exc


def local_versions(repository: Path) -> dict[int, Family]:
    """Every complete version of the local repository -> its family."""
    return {number: family for family in FAMILIES for number in versions(repository, family)}


def upload_new(
    s3: S3Client, where: s3m.Location, repository: Path, known: set[int], *, run_prefix: str = RUN_PREFIX
) -> list[int]:
    """Uploads, oldest first, every complete local version not in ``known`` (its run, then the version with its
    manifest last) and adds it to ``known``; returns the uploaded numbers."""
    done = []
    for number, family in sorted(local_versions(repository).items()):
        if number in known:
            continue
        run_dir = _run_of(repository, family, number)
        upload_run(s3, where.bucket, number, run_dir, run_prefix=run_prefix, orphan=True)  # not in S3: no manifest
        s3m.upload_version(s3, where, repository, number)
        known.add(number)
        done.append(number)
        log.info("uploaded version %d (%s) to %s", number, family.name, where.url)
    return done


# --- the replicas ------------------------------------------------------------------------------------------------


def resolve_replicas(service: str, port: int, resolve: Callable[..., list[Any]] = socket.getaddrinfo) -> list[str]:
    """``ip:port`` of every ready Triton pod: the A records of a headless Service (Kubernetes lists only ready
    pods there, and a pod that is still starting loads the newest version from S3 by itself)."""
    try:
        found = resolve(service, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise AwsError(f"cannot resolve the Triton replicas {service}: {exc}") from exc
    addresses = sorted({str(info[4][0]) for info in found})
    if not addresses:
        raise AwsError(f"{service} resolves to no Triton replica")
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]


class HttpReplica(TritonControl):
    """A replica's HTTP model control: :class:`recsys.stack.triton.TritonControl` plus the ensemble's config."""

    def __init__(self, address: str, *, timeout_s: float = 120.0) -> None:
        from recsys.core.settings import get_settings

        key = get_settings().triton_api_key.get_secret_value() or None  # the replicas' restricted APIs want it
        super().__init__(TritonUrls(http=address, grpc="", metrics=""), timeout_s=timeout_s, api_key=key)

    def ensemble_versions(self, name: str) -> set[int]:
        """The step versions ``name`` is pinned to as the replica runs it (``{-1}``: unpinned, the newest; empty:
        not loaded there)."""
        status, body = self._request("GET", f"/v2/models/{name}/config")
        if status != 200:
            return set()  # not loaded there: not pinned to anything
        steps = json.loads(body).get("ensemble_scheduling", {}).get("step", [])
        return {int(step.get("model_version", -1)) for step in steps}


@dataclass
class EveryReplica:
    """The loop's :class:`~trainer.triton.repository.ModelControl` on EKS: uploads before loading, then loads
    every replica (see the module docstring)."""

    replicas: Mapping[str, Replica]
    upload: Callable[[], list[int]]  # uploads what was published locally and not yet to S3
    rollback: Callable[[int], object]  # removes a version from S3
    attempts: int = 3
    backoff_s: float = 2.0
    sleep: Callable[[float], None] = time.sleep
    removed: list[int] = field(default_factory=list)  # versions no replica loaded, taken off S3 again
    version: int | None = None  # the newest version this control uploaded (and so is loading)
    _failed: dict[str, str] = field(default_factory=dict)  # replica -> why it keeps the version before ``version``

    @property
    def lagging(self) -> dict[str, str]:
        """Replicas where a load of the swap to :attr:`version` failed after its retries. One that failed at a step
        or an ensemble serves the version before (its ensembles stay pinned to it); one that failed while retiring
        the old steps serves :attr:`version` with the old steps still loaded. Either way the next run re-activates
        :attr:`version` there."""
        return {a: f"did not complete the swap to version {self.version} ({e})" for a, e in self._failed.items()}

    def load_model(self, name: str, config: str | None = None) -> None:
        new = self.upload()  # AwsError: nothing was loaded anywhere
        if new:
            self.version, self._failed = new[-1], {}
        for address, replica in self.replicas.items():
            if address in self._failed:
                continue  # it keeps its pinned ensembles for this version
            error = self._load(replica, name, config)
            if error is not None:
                self._failed[address] = f"{name}: {error}"
        if len(self._failed) == len(self.replicas):
            version = self.version
            if version is not None and version not in self.removed:
                self.rollback(version)
                self.removed.append(version)
            detail = "; ".join(f"{a}: {e}" for a, e in self._failed.items())
            raise AwsError(f"no replica loaded {name} ({detail}); version {version} removed from S3")

    def _load(self, replica: Replica, name: str, config: str | None) -> str | None:
        error = ""
        for attempt in range(self.attempts):
            try:
                replica.load_model(name, config)
                return None
            except RecsysError as exc:
                error = str(exc)
                if attempt + 1 < self.attempts:
                    self.sleep(self.backoff_s * 2**attempt)
        return error


def reconcile(
    replicas: Mapping[str, Replica], repository: Path, served: Mapping[str, int], family: Family = FACTOR
) -> dict[str, str]:
    """Activates ``family``'s served version on every replica whose ensembles are not all pinned to it (one that
    failed in an earlier run, or a pod started since, whose ensembles load unpinned); returns replica -> what was
    done or what failed. Only the loop's family: the other one is CD's, loaded when pods start."""
    done: dict[str, str] = {}
    version = served.get(family.name)
    if version is None:
        return done
    for address, replica in replicas.items():
        try:
            if all(replica.ensemble_versions(e) == {version} for e in version_ensembles(repository, family, version)):
                continue
            activate(replica, repository, family, version)
            done[address] = f"now serves {family.name} version {version}"
        except RecsysError as exc:
            done[address] = f"still not on {family.name} version {version}: {exc}"
    return done


# --- one run ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    cycles: list[Cycle]
    reconciled: dict[str, str]
    lagging: dict[str, str]
    removed: list[int]

    @property
    def ok(self) -> bool:
        return not self.lagging and not self.removed and all(c.decision != "failed" for c in self.cycles)


def run_once(
    s3: S3Client,
    where: s3m.Location,
    dsn: str,
    replicas: Mapping[str, Replica],
    workdir: Path,
    *,
    kinds: tuple[Kind, ...] = ("items", "retrain"),
    options: RetrainOptions | None = None,
    rules: CatalogueRules | None = None,
    run_prefix: str = RUN_PREFIX,
    sleep: Callable[[float], None] = time.sleep,
    keep_record: Callable[[str, Cycle], object] = record,
) -> RunResult:
    """One CronJob run (see the module docstring); every cycle it ran, ``failed`` ones included, is recorded."""
    # Here, not at the top: they import torch, which the other helpers of `python -m scripts.aws` do not need.
    from recsys.loop.items import refresh_items
    from recsys.loop.retrain import retrain_cycle

    cycles: list[Cycle] = []

    def keep(cycle: Cycle) -> None:
        try:
            keep_record(dsn, cycle)
        except RecordError as exc:
            log.warning("%s", exc)
        cycles.append(cycle)

    started = datetime.now(UTC)
    repository, runs = workdir / "repository", workdir / "runs"
    try:
        mirrored = mirror(s3, where, repository, runs, run_prefix=run_prefix)
    except RecsysError as exc:
        keep(Cycle(kind=kinds[-1], started=started, finished=datetime.now(UTC), decision="failed",
                   reason=f"the served version could not be mirrored from {where.url}: {exc}"))  # fmt: skip
        return RunResult(cycles, {}, {}, [])
    log.info("mirrored versions %s (%d objects) from %s", mirrored.served, mirrored.files, where.url)
    reconciled = reconcile(replicas, repository, mirrored.served)
    known = set(mirrored.uploaded)
    control = EveryReplica(
        replicas,
        upload=lambda: upload_new(s3, where, repository, known, run_prefix=run_prefix),
        rollback=lambda version: s3m.remove_version(s3, where, version),
        sleep=sleep,
    )
    for kind in kinds:
        cycle_started = datetime.now(UTC)
        try:
            if kind == "items":
                cycle = refresh_items(repository, dsn, control, runs, rules=rules, ann=options.ann if options else None)
            else:
                cycle = retrain_cycle(repository, dsn, control, runs, options)
        except RecsysError as exc:
            cycle = Cycle(kind=kind, started=cycle_started, finished=datetime.now(UTC), decision="failed",
                          reason=str(exc))  # fmt: skip
        if cycle.decision == "promoted" and cycle.published_version == control.version and control.lagging:
            lag = "; ".join(f"replica {a} {e}" for a, e in control.lagging.items())
            cycle = dataclasses.replace(cycle, reason=f"{cycle.reason}; {lag} (the next run retries it)")
        keep(cycle)
        if cycle.decision == "failed":
            break  # the mirror may now hold a version S3 does not: the next run starts from S3 again
    return RunResult(cycles, reconciled, dict(control.lagging), list(control.removed))


def trainer_policy(bucket: str, prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The IAM policy of the trainer's role (IRSA): read and write the repository, its manifests and the runs,
    delete only what a rollback of a version no replica loaded removes (its version folders and manifest)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListModelBucket",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [f"{p}/*" for p in prefixes] + list(prefixes)}},
            },
            {
                "Sid": "ReadWriteModels",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/{p}/*" for p in prefixes],
            },
        ],
    }
