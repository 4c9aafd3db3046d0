"""The Triton model repository on S3: upload one published version with a checksum manifest, verify it, and
number the next one.

Layout in the bucket (Triton reads ``s3://BUCKET/<repository prefix>``):

    triton/<model>/config.pbtxt          every model's config (the ``native`` flavour for the NGC image)
    triton/<model>/<N>/...               the files of version N of each step model
    triton/<ensemble>/1/.keep            S3 has no empty folders; an ensemble's version folder needs an object
    manifests/v<N>.json                  key, size and SHA-256 of every object of version N, written last

A version counts as uploaded once its manifest exists: the manifest is written after every object, each object
is sent with its SHA-256 (S3 refuses a body that does not match), and uploading a version whose manifest
already exists is a no-op when the content is the same and an error when it differs (versions are immutable).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from scripts.aws import AwsError
from scripts.aws.names import MANIFEST_PREFIX, REPOSITORY_PREFIX

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from trainer.ann import AnnPolicy

MANIFEST_SCHEMA = 1
PLACEHOLDER = ".keep"
_CHUNK = 1 << 20
_MANIFEST_NAME = re.compile(r"v(\d+)\.json")


@dataclass(frozen=True)
class Entry:
    """One object of a version, keyed relative to the repository prefix."""

    key: str
    size: int
    sha256: str  # hex


@dataclass(frozen=True)
class Manifest:
    version: int
    entries: tuple[Entry, ...]

    def to_json(self) -> str:
        files = [{"key": e.key, "size": e.size, "sha256": e.sha256} for e in self.entries]
        return json.dumps({"schema": MANIFEST_SCHEMA, "version": self.version, "files": files}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            if data["schema"] != MANIFEST_SCHEMA:
                raise AwsError(f"manifest schema {data['schema']} is not {MANIFEST_SCHEMA}")
            entries = tuple(Entry(str(f["key"]), int(f["size"]), str(f["sha256"])) for f in data["files"])
            return cls(int(data["version"]), entries)
        except (ValueError, KeyError, TypeError) as exc:
            raise AwsError(f"unreadable manifest: {exc}") from exc


@dataclass(frozen=True)
class Location:
    """Where a model repository lives in a bucket."""

    bucket: str
    prefix: str = REPOSITORY_PREFIX
    manifest_prefix: str = MANIFEST_PREFIX

    def key(self, relative: str) -> str:
        return f"{self.prefix.strip('/')}/{relative}"

    def manifest_key(self, version: int) -> str:
        return f"{self.manifest_prefix.strip('/')}/v{version}.json"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_files(repository: Path, version: int) -> list[tuple[str, Path | None]]:
    """(key, local file) of everything Triton needs to serve ``version``; ``None`` is an empty placeholder.

    Every model folder (one with a ``config.pbtxt``) contributes its config; the steps of the family that owns
    ``version`` (:data:`trainer.triton.family.FAMILIES`; each of its steps present must hold it) that folder;
    an ensemble (whose numbered folders are all empty) a placeholder per numbered folder. The other family's
    steps keep their own versions, uploaded under their own numbers.
    """
    from trainer.triton.family import FAMILIES

    if not repository.is_dir():
        raise AwsError(f"{repository}: not a folder")
    models = sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file())
    if not models:
        raise AwsError(f"{repository}: no model folders (none holds a config.pbtxt)")
    held = {m.name for m in models if any((m / str(version)).rglob("*"))}
    owner = max(FAMILIES, key=lambda f: len(set(f.steps) & held))
    if not set(owner.steps) & held:
        raise AwsError(f"{repository}: no model holds a version {version}")
    present = {m.name for m in models}
    missing = [m for m in owner.required_steps if m in present and m not in held]  # recsys_scorer_ann is optional
    if missing:
        raise AwsError(f"{repository}: model {missing[0]} has no version {version}")
    steps = set(owner.steps)
    found: list[tuple[str, Path | None]] = []
    for model in models:
        found.append((f"{model.name}/config.pbtxt", model / "config.pbtxt"))
        numbered = sorted(p for p in model.iterdir() if p.is_dir() and p.name.isdigit())
        if model.name in steps:
            files = sorted(f for f in (model / str(version)).rglob("*") if f.is_file())
            found += [(f"{model.name}/{f.relative_to(model).as_posix()}", f) for f in files]
        elif numbered and not any(any(p.iterdir()) for p in numbered):
            found += [(f"{model.name}/{p.name}/{PLACEHOLDER}", None) for p in numbered]
    return found


def build_manifest(repository: Path, version: int) -> tuple[Manifest, dict[str, Path | None]]:
    files = version_files(repository, version)
    entries = []
    for key, path in files:
        if path is None:
            entries.append(Entry(key, 0, hashlib.sha256(b"").hexdigest()))
        else:
            entries.append(Entry(key, path.stat().st_size, sha256_file(path)))
    return Manifest(version, tuple(entries)), dict(files)


def read_manifest(s3: S3Client, where: Location, version: int) -> Manifest | None:
    try:
        body = s3.get_object(Bucket=where.bucket, Key=where.manifest_key(version))["Body"].read()
    except ClientError as exc:
        if _code(exc) in ("NoSuchKey", "404"):
            return None
        raise AwsError(f"S3: {exc}") from exc
    return Manifest.from_json(body.decode())


def upload_version(s3: S3Client, where: Location, repository: Path, version: int) -> Manifest:
    """Uploads version ``version`` of a local repository, the manifest last; returns the manifest."""
    manifest, files = build_manifest(repository, version)
    existing = read_manifest(s3, where, version)
    if existing is not None:
        if existing == manifest:
            return existing
        raise AwsError(f"{where.url}: version {version} already exists with other content (versions are immutable)")
    try:
        for entry in manifest.entries:
            path = files[entry.key]
            checksum = base64.b64encode(bytes.fromhex(entry.sha256)).decode()
            if path is None:
                s3.put_object(Bucket=where.bucket, Key=where.key(entry.key), Body=b"", ChecksumSHA256=checksum)
                continue
            with path.open("rb") as body:
                s3.put_object(Bucket=where.bucket, Key=where.key(entry.key), Body=body, ChecksumSHA256=checksum)
        s3.put_object(
            Bucket=where.bucket,
            Key=where.manifest_key(version),
            Body=manifest.to_json().encode(),
            ContentType="application/json",
        )
    except ClientError as exc:
        raise AwsError(f"S3 upload of version {version}: {exc}") from exc
    return manifest


def verify_version(s3: S3Client, where: Location, version: int) -> list[str]:
    """Reads every object of ``version`` back and returns what does not match its manifest (empty: all good)."""
    manifest = read_manifest(s3, where, version)
    if manifest is None:
        return [f"{where.manifest_key(version)}: no manifest, so version {version} was never completely uploaded"]
    problems = []
    for entry in manifest.entries:
        try:
            body = s3.get_object(Bucket=where.bucket, Key=where.key(entry.key))["Body"]
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                problems.append(f"{entry.key}: missing")
                continue
            raise AwsError(f"S3: {exc}") from exc
        digest = hashlib.sha256()
        size = 0
        for chunk in iter(lambda: body.read(_CHUNK), b""):  # noqa: B023 (consumed within the iteration)
            digest.update(chunk)
            size += len(chunk)
        if size != entry.size or digest.hexdigest() != entry.sha256:
            problems.append(
                f"{entry.key}: {size} bytes, sha256 {digest.hexdigest()[:12]}..., manifest says "
                f"{entry.size} bytes, {entry.sha256[:12]}..."
            )
    return problems


def uploaded_versions(s3: S3Client, where: Location) -> list[int]:
    """Version numbers whose manifest exists, ascending."""
    numbers = []
    for key in _keys(s3, where.bucket, where.manifest_prefix.strip("/") + "/"):
        match = _MANIFEST_NAME.fullmatch(key.rsplit("/", 1)[-1])
        if match:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def next_version(s3: S3Client, where: Location) -> int:
    uploaded = uploaded_versions(s3, where)
    return uploaded[-1] + 1 if uploaded else 1


def ensure_bucket(s3: S3Client, bucket: str, region: str) -> None:
    """Creates the model bucket if it is missing: private, encrypted, versioned (an overwritten object can be
    recovered). Idempotent."""
    try:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket"):
                raise
            if region == "us-east-1":
                s3.create_bucket(Bucket=bucket)
            else:
                location: Any = {"LocationConstraint": region}  # the stubs enumerate only today's regions
                s3.create_bucket(Bucket=bucket, CreateBucketConfiguration=location)
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    except ClientError as exc:
        raise AwsError(f"S3 bucket {bucket}: {exc}") from exc


def publish_run(
    s3: S3Client, where: Location, run_dir: Path, workdir: Path, *, ann: AnnPolicy | None = None
) -> Manifest:
    """Publishes a trained run (either family) as the next version on S3: export + parity check
    (``trainer.triton.publish``) into a fresh local repository numbered after what the bucket holds, the family's
    configs rendered for the NGC image, then upload. ``ann``: the approximate index's policy and gate
    (``AnnPolicy.from_settings``: ``RECSYS_ANN_*``); the local repository is fresh, so ``inherit`` means ``auto``
    here (the bucket's versions are not read back).

    Needs the whole project installed (torch, onnx); the other helpers need only boto3 (and the family
    description, which is torch-free).
    """
    from trainer.triton.publish import publish
    from trainer.triton.repository import render_repository

    version = next_version(s3, where)
    repository = workdir / "repository"
    published = publish(run_dir, repository, version=version, ann=ann)
    render_repository(repository, "native", families=(published.family,))
    return upload_version(s3, where, repository, version)


def remove_version(s3: S3Client, where: Location, version: int) -> list[str]:
    """Rolls version ``version`` back: deletes its version folders (the keys its manifest lists under
    ``<model>/<version>/``), then its manifest; configs and ensemble placeholders stay. Returns the deleted keys.
    The bucket's versioning keeps what was deleted."""
    manifest = read_manifest(s3, where, version)
    if manifest is None:
        raise AwsError(f"{where.url}: version {version} has no manifest (nothing to roll back)")
    keys = [e.key for e in manifest.entries if e.key.split("/")[1:2] == [str(version)]]
    try:
        for key in keys:
            s3.delete_object(Bucket=where.bucket, Key=where.key(key))
        s3.delete_object(Bucket=where.bucket, Key=where.manifest_key(version))
    except ClientError as exc:
        raise AwsError(f"S3 removal of version {version}: {exc}") from exc
    return keys


def _keys(s3: S3Client, bucket: str, prefix: str) -> Iterator[str]:
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]
    except ClientError as exc:
        raise AwsError(f"S3 listing of s3://{bucket}/{prefix}: {exc}") from exc


def _code(exc: ClientError) -> str:
    error: Any = exc.response.get("Error", {})
    return str(error.get("Code", ""))
