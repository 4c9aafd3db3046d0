"""The S3 model repository with both families in it: a version is uploaded, checked and rolled back as the files of
the one family that owns its number (regression: the helper required every model folder at the same version, which
a repository holding both families can never satisfy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (pip install boto3)")
moto = pytest.importorskip("moto", reason="moto is not installed (pip install 'moto[s3,ecr,iam,sts]')")

import deploy_support  # noqa: E402, F401  (puts the repository root on sys.path, for scripts.aws)

from scripts.aws import AwsError, s3_models  # noqa: E402
from trainer.triton.family import FACTOR, SESSION  # noqa: E402
from trainer.triton.repository import render_repository  # noqa: E402

BUCKET = "recsys-models-families"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),  # moto's documented dummies, not keys
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing"),
        ("AWS_DEFAULT_REGION", "eu-west-1"),
    ):
        monkeypatch.setenv(name, value)
    with moto.mock_aws():
        client = boto3.client("s3", region_name="eu-west-1")
        s3_models.ensure_bucket(client, BUCKET, "eu-west-1")
        yield client


def both_families(root: Path) -> Path:
    """Factor version 1 and session version 2, as two publishes into one repository lay them out."""
    render_repository(root, "native")
    for family, version in ((FACTOR, 1), (SESSION, 2)):
        for model in family.steps:
            folder = root / model / str(version)
            folder.mkdir()
            (folder / "model.py").write_text(f"# {model} v{version}\n")
    return root


def test_each_version_carries_its_own_familys_files(s3: Any, tmp_path: Path) -> None:
    repository = both_families(tmp_path / "repo")
    where = s3_models.Location(BUCKET)
    factor = {e.key for e in s3_models.upload_version(s3, where, repository, 1).entries}
    session = {e.key for e in s3_models.upload_version(s3, where, repository, 2).entries}
    assert {f"{m}/1/model.py" for m in FACTOR.steps} <= factor
    assert not any(key.split("/")[1] == "2" for key in factor)
    assert {f"{m}/2/model.py" for m in SESSION.steps} <= session
    assert not any(key.split("/")[1] == "1" and not key.endswith(".keep") for key in session)
    for name in (*FACTOR.ensembles, *SESSION.ensembles):  # every config and ensemble folder, in both
        assert f"{name}/1/.keep" in factor & session
    assert s3_models.verify_version(s3, where, 1) == s3_models.verify_version(s3, where, 2) == []
    with pytest.raises(AwsError, match="no model holds a version 3"):
        s3_models.version_files(repository, 3)


def test_remove_version_rolls_back_exactly_that_version(s3: Any, tmp_path: Path) -> None:
    repository = both_families(tmp_path / "repo")
    where = s3_models.Location(BUCKET)
    for version in (1, 2):
        s3_models.upload_version(s3, where, repository, version)
    deleted = s3_models.remove_version(s3, where, 2)
    assert sorted(deleted) == sorted(f"{m}/2/model.py" for m in SESSION.steps)
    assert s3_models.uploaded_versions(s3, where) == [1]
    assert s3_models.verify_version(s3, where, 1) == []  # the other family's version is untouched
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert f"triton/{SESSION.steps[0]}/config.pbtxt" in keys  # configs stay
    with pytest.raises(AwsError, match="no manifest"):
        s3_models.remove_version(s3, where, 2)
