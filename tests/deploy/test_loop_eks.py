"""The training loop on EKS (scripts/aws/loop.py) against moto's S3 and fake Triton replicas (no cluster runs
here): the mirror takes exactly the served versions' files and checks them, a promoted version is uploaded before
any replica is asked to load it and then reaches every replica, an upload failure loads nothing, a replica that
fails is retried, reported and reconciled by the next run, and a version no replica loads leaves S3 again. The
repository, publish, activate and loop code is the real one; a publishing cycle runs against a real PostgreSQL."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (pip install boto3)")
moto = pytest.importorskip("moto", reason="moto is not installed (pip install 'moto[s3,ecr,iam,sts]')")

import deploy_support  # noqa: E402  (puts the repository root on sys.path, for scripts.aws)
from botocore.exceptions import ClientError  # noqa: E402

from recsys.core.errors import RecsysError  # noqa: E402
from recsys.stack.triton.config import TritonServerError  # noqa: E402
from scripts.aws import AwsError, loop, s3_models  # noqa: E402
from scripts.aws.__main__ import _repository_location, build_parser  # noqa: E402
from serving.contract import MANIFEST_FILE  # noqa: E402
from trainer.triton.family import FACTOR, SESSION  # noqa: E402
from trainer.triton.repository import activate, render_repository  # noqa: E402

BUCKET = "recsys-models-loop"
WHERE = s3_models.Location(BUCKET)


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


class FakeReplica:
    """A replica's model control as the loop uses it: loads succeed (or fail ``failures`` times, or always), and an
    ensemble loaded with a config is pinned to the step versions in it."""

    def __init__(self, name: str, *, failures: int = 0, on_load: Any = None) -> None:
        self.name, self.failures, self.on_load = name, failures, on_load
        self.loads: list[str] = []
        self.pins: dict[str, set[int]] = {}

    def load_model(self, name: str, config: str | None = None) -> None:
        if self.on_load is not None:
            self.on_load(self, name)
        if self.failures:
            self.failures -= 1
            raise TritonServerError(f"Triton could not load model {name!r}: out of memory")
        self.loads.append(name)
        steps = json.loads(config).get("ensemble_scheduling", {}).get("step", []) if config else []
        if steps:
            self.pins[name] = {int(step["model_version"]) for step in steps}

    def ensemble_versions(self, name: str) -> set[int]:
        return self.pins.get(name, {-1})


ALWAYS = 10**6


def fake_version(repository: Path, family: Any, version: int, run_dir: Path) -> None:
    """A version as publish lays it out (model.py + publish.json naming its run), without the export."""
    for model in family.steps:
        folder = repository / model / str(version)
        folder.mkdir(parents=True)
        (folder / "model.py").write_text(f"# {model} v{version}\n")
        (folder / MANIFEST_FILE).write_text(json.dumps({"version": version, "run": str(run_dir)}) + "\n")


def fake_run(folder: Path, seed: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"model": "als", "seed": seed}))
    (folder / "model.npz").write_bytes(seed.encode() * 100)
    return folder


def seeded(s3: Any, root: Path) -> Path:
    """S3 with factor v1, session v2, factor v3 (each uploaded with its run, as the loop does)."""
    repository = root / "published"
    render_repository(repository, "native")
    for family, version in ((FACTOR, 1), (SESSION, 2), (FACTOR, 3)):
        run = fake_run(root / f"run{version}", f"run {version}")
        fake_version(repository, family, version, run)
        assert loop.upload_new(s3, WHERE, repository, set(range(1, version))) == [version]
    return repository


# --- the mirror -------------------------------------------------------------------------------------------------


def test_mirror_takes_exactly_the_served_versions_and_restores_the_run(s3: Any, tmp_path: Path) -> None:
    seeded(s3, tmp_path)
    mirrored = loop.mirror(s3, WHERE, tmp_path / "mirror", tmp_path / "runs")
    assert mirrored.served == {FACTOR.name: 3, SESSION.name: 2}
    assert mirrored.uploaded == {1, 2, 3}
    on_disk = {p.relative_to(mirrored.repository).as_posix() for p in mirrored.repository.rglob("*") if p.is_file()}
    newest = {e.key for e in s3_models.read_manifest(s3, WHERE, 3).entries}  # type: ignore[union-attr]
    session = {e.key for e in s3_models.read_manifest(s3, WHERE, 2).entries if e.key.split("/")[1] == "2"}  # type: ignore[union-attr]
    assert on_disk == newest | session  # version 1 (not served) is not fetched
    assert not any(key.split("/")[1] == "1" and not key.endswith(".keep") for key in on_disk)
    # The warm start's base: the run of version 3, and publish.json points at it.
    assert (mirrored.run_dir / "model.npz").read_bytes() == b"run 3" * 100
    publish_json = json.loads((mirrored.repository / FACTOR.steps[0] / "3" / MANIFEST_FILE).read_text())
    assert publish_json["run"] == str(mirrored.run_dir.resolve())
    # The next local version number is S3's next one.
    from trainer.triton.repository import next_version

    assert next_version(mirrored.repository) == s3_models.next_version(s3, WHERE) == 4


def test_mirror_takes_the_configs_a_newer_version_of_the_other_family_does_not_list(s3: Any, tmp_path: Path) -> None:
    """CD's `s3 publish` uploads a repository holding its own family's configs only: after a session version the
    factor configs come from the factor version's manifest (or publish would render local-flavour ones)."""
    factor_repo, session_repo = tmp_path / "factor", tmp_path / "session"
    render_repository(factor_repo, "native", families=(FACTOR,))
    render_repository(session_repo, "native", families=(SESSION,))
    fake_version(factor_repo, FACTOR, 1, fake_run(tmp_path / "run1", "run 1"))
    fake_version(session_repo, SESSION, 2, fake_run(tmp_path / "run2", "run 2"))
    assert loop.upload_new(s3, WHERE, factor_repo, set()) == [1]
    assert loop.upload_new(s3, WHERE, session_repo, {1}) == [2]
    mirrored = loop.mirror(s3, WHERE, tmp_path / "mirror", tmp_path / "runs")
    for name in (*FACTOR.files, *FACTOR.ensembles, *SESSION.files, *SESSION.ensembles):
        assert (mirrored.repository / name / "config.pbtxt").is_file(), name
    native = (factor_repo / "recsys_a" / "config.pbtxt").read_text()
    assert (mirrored.repository / "recsys_a" / "config.pbtxt").read_text() == native


def test_mirror_refuses_an_object_that_does_not_match_its_manifest(s3: Any, tmp_path: Path) -> None:
    seeded(s3, tmp_path)
    s3.put_object(Bucket=BUCKET, Key=WHERE.key(f"{FACTOR.steps[1]}/3/model.py"), Body=b"# tampered\n")
    with pytest.raises(AwsError, match=rf"{FACTOR.steps[1]}/3/model.py: \d+ bytes, sha256 .* its manifest says"):
        loop.mirror(s3, WHERE, tmp_path / "mirror", tmp_path / "runs")


def test_mirror_says_how_to_attach_a_missing_run(s3: Any, tmp_path: Path) -> None:
    seeded(s3, tmp_path)
    s3.delete_object(Bucket=BUCKET, Key="runs/v3.json")
    with pytest.raises(AwsError, match=r"no training run at s3://.*/runs/v3.json.*upload-run RUN_DIR --version 3"):
        loop.mirror(s3, WHERE, tmp_path / "mirror", tmp_path / "runs")


def test_runs_are_immutable(s3: Any, tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", "a")
    assert loop.upload_run(s3, BUCKET, 7, run) == 2
    assert loop.upload_run(s3, BUCKET, 7, run) == 2  # the same again: a no-op
    (run / "model.npz").write_bytes(b"other")
    with pytest.raises(AwsError, match="exists with other content"):
        loop.upload_run(s3, BUCKET, 7, run)
    # The run of a number whose version was removed (or never completed) is replaced by the next one.
    assert loop.upload_run(s3, BUCKET, 7, run, orphan=True) == 2
    body = s3.get_object(Bucket=BUCKET, Key="runs/v7/model.npz")["Body"].read()
    assert body == b"other"


# --- loading every replica ----------------------------------------------------------------------------------------


def _mirrored_with_a_new_version(s3: Any, tmp_path: Path) -> tuple[loop.Mirror, set[int]]:
    seeded(s3, tmp_path)
    mirrored = loop.mirror(s3, WHERE, tmp_path / "mirror", tmp_path / "runs")
    fake_version(mirrored.repository, FACTOR, 4, fake_run(tmp_path / "runs" / "cycle-4", "run 4"))
    return mirrored, set(mirrored.uploaded)


def _control(s3: Any, mirrored: loop.Mirror, known: set[int], replicas: dict[str, Any]) -> loop.EveryReplica:
    return loop.EveryReplica(
        replicas,
        upload=lambda: loop.upload_new(s3, WHERE, mirrored.repository, known),
        rollback=lambda version: s3_models.remove_version(s3, WHERE, version),
        sleep=lambda seconds: None,
    )


def test_a_new_version_is_uploaded_before_the_first_load_then_loaded_everywhere(s3: Any, tmp_path: Path) -> None:
    mirrored, known = _mirrored_with_a_new_version(s3, tmp_path)
    seen_at_first_load: list[list[int]] = []

    def check(replica: FakeReplica, name: str) -> None:
        if not replica.loads:
            seen_at_first_load.append(s3_models.uploaded_versions(s3, WHERE))
            assert s3_models.verify_version(s3, WHERE, 4) == []
            assert "runs/v4.json" in {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]}

    replicas = {f"10.0.0.{i}:8000": FakeReplica(f"r{i}", on_load=check) for i in (1, 2, 3)}
    control = _control(s3, mirrored, known, replicas)
    activate(control, mirrored.repository, FACTOR, 4)
    assert seen_at_first_load == [[1, 2, 3, 4]] * 3
    for replica in replicas.values():
        assert {e: replica.ensemble_versions(e) for e in FACTOR.ensembles} == {key: {4} for key in FACTOR.ensembles}
        # Steps first, ensembles pinned after them, then the steps retired to version 4 alone.
        assert replica.loads == [*FACTOR.steps, *FACTOR.ensembles, *FACTOR.steps]
    assert not control.lagging
    assert not control.removed


def test_an_upload_failure_loads_nothing(s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirrored, known = _mirrored_with_a_new_version(s3, tmp_path)
    replicas = {"10.0.0.1:8000": FakeReplica("r1"), "10.0.0.2:8000": FakeReplica("r2")}
    control = _control(s3, mirrored, known, replicas)
    real_put = s3.put_object

    def refuse(**kwargs: Any) -> Any:
        if "/4/" in kwargs["Key"]:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "PutObject")
        return real_put(**kwargs)

    monkeypatch.setattr(s3, "put_object", refuse)
    with pytest.raises(AwsError, match=r"S3 upload of version 4: .*AccessDenied"):
        activate(control, mirrored.repository, FACTOR, 4)
    assert all(not r.loads for r in replicas.values())
    assert s3_models.uploaded_versions(s3, WHERE) == [1, 2, 3]  # no manifest: version 4 does not count


def test_a_replica_is_retried_then_left_on_its_version_and_reconciled_by_the_next_run(s3: Any, tmp_path: Path) -> None:
    mirrored, known = _mirrored_with_a_new_version(s3, tmp_path)
    flaky, broken, healthy = FakeReplica("flaky", failures=2), FakeReplica("broken", failures=ALWAYS), FakeReplica("ok")
    for replica in (flaky, broken, healthy):  # every replica served version 3 before
        replica.pins = {key: {3} for key in FACTOR.ensembles}
    replicas = {"10.0.0.1:8000": flaky, "10.0.0.2:8000": broken, "10.0.0.3:8000": healthy}
    control = _control(s3, mirrored, known, replicas)
    activate(control, mirrored.repository, FACTOR, 4)  # does not raise: two replicas serve version 4
    assert flaky.ensemble_versions("recsys_a") == healthy.ensemble_versions("recsys_a") == {4}
    assert broken.ensemble_versions("recsys_a") == {3}  # kept its pinned version: no mix
    assert broken.loads == []
    assert broken.failures == ALWAYS - 3
    assert list(control.lagging) == ["10.0.0.2:8000"]
    swap = "did not complete the swap to version 4 (recsys_lookup: Triton could not load"
    assert swap in control.lagging["10.0.0.2:8000"]
    assert s3_models.uploaded_versions(s3, WHERE) == [1, 2, 3, 4]

    # The next run mirrors version 4 and activates it on the replica that still serves 3, only there.
    broken.failures = 0
    loads_before = {name: len(r.loads) for name, r in replicas.items()}
    again = loop.mirror(s3, WHERE, tmp_path / "next" / "mirror", tmp_path / "next" / "runs")
    done = loop.reconcile(replicas, again.repository, again.served)
    assert done == {"10.0.0.2:8000": f"now serves {FACTOR.name} version 4"}
    assert broken.ensemble_versions("recsys_a") == {4}
    assert {name: len(r.loads) for name, r in replicas.items() if r is not broken} == {
        name: n for name, n in loads_before.items() if replicas[name] is not broken
    }


def test_rollback_with_remove_version_moves_every_replica_back_at_the_next_run(s3: Any, tmp_path: Path) -> None:
    """docs/deploy-eks.md's rollback: remove version 4 from S3; the next run mirrors version 3 and pins every
    replica that serves 4 back to it; the next promoted version takes the number 4 again, its run replaced."""
    mirrored, known = _mirrored_with_a_new_version(s3, tmp_path)
    replicas = {f"10.0.0.{i}:8000": FakeReplica(f"r{i}") for i in (1, 2)}
    activate(_control(s3, mirrored, known, replicas), mirrored.repository, FACTOR, 4)
    s3_models.remove_version(s3, WHERE, 4)
    again = loop.mirror(s3, WHERE, tmp_path / "next" / "mirror", tmp_path / "next" / "runs")
    assert again.served[FACTOR.name] == 3
    assert loop.reconcile(replicas, again.repository, again.served) == dict.fromkeys(
        replicas, f"now serves {FACTOR.name} version 3"
    )
    assert all(r.ensemble_versions("recsys_a") == {3} for r in replicas.values())
    fake_version(again.repository, FACTOR, 4, fake_run(tmp_path / "next" / "runs" / "cycle-4", "another 4"))
    assert loop.upload_new(s3, WHERE, again.repository, set(again.uploaded)) == [4]
    assert s3.get_object(Bucket=BUCKET, Key="runs/v4/model.npz")["Body"].read() == b"another 4" * 100


def test_a_version_no_replica_loads_is_removed_from_s3(s3: Any, tmp_path: Path) -> None:
    mirrored, known = _mirrored_with_a_new_version(s3, tmp_path)
    replicas = {f"10.0.0.{i}:8000": FakeReplica(f"r{i}", failures=ALWAYS) for i in (1, 2)}
    control = _control(s3, mirrored, known, replicas)
    with pytest.raises(AwsError, match=r"no replica loaded recsys_lookup .*version 4 removed from S3"):
        activate(control, mirrored.repository, FACTOR, 4)
    assert control.removed == [4]
    assert s3_models.uploaded_versions(s3, WHERE) == [1, 2, 3]  # starting pods load version 3, not a broken 4
    assert isinstance(AwsError("x"), RecsysError)  # so retrain_cycle records it as a failed cycle


def test_replicas_are_the_a_records_of_the_headless_service() -> None:
    def resolve(host: str, port: int, type: int) -> list[Any]:
        assert (host, port) == ("triton-replicas.recsys.svc.cluster.local", 8000)
        return [(2, 1, 6, "", ("10.0.1.7", port)), (2, 1, 6, "", ("10.0.0.9", port)), (2, 1, 6, "", ("10.0.1.7", port))]

    found = loop.resolve_replicas("triton-replicas.recsys.svc.cluster.local", 8000, resolve)
    assert found == ["10.0.0.9:8000", "10.0.1.7:8000"]
    with pytest.raises(AwsError, match="resolves to no Triton replica"):
        loop.resolve_replicas("x", 8000, lambda *a, **k: [])

    def gone(*args: Any, **kwargs: Any) -> list[Any]:
        raise OSError("Name or service not known")

    with pytest.raises(AwsError, match="cannot resolve the Triton replicas x: Name or service not known"):
        loop.resolve_replicas("x", 8000, gone)


def test_command_line_of_the_cronjob() -> None:
    args = build_parser().parse_args(
        ["loop", "retrain", "--repository", "s3://b/triton", "--workdir", "/work", "--replicas-service", "t-r"]
    )
    assert _repository_location(args.repository, args.manifest_prefix) == s3_models.Location("b", "triton")
    with pytest.raises(AwsError, match="is not s3://BUCKET/PREFIX"):
        _repository_location("s3://b", "manifests")
    assert (args.area, args.command, args.replicas_service, args.port, args.run_prefix) == (
        "loop", "retrain", "t-r", 8000, "runs",
    )  # fmt: skip
    both = ["--replicas-service", "s", "--replica", "h:1"]  # one way to find the replicas, not two
    with pytest.raises(SystemExit):
        build_parser().parse_args(["loop", "retrain", "--repository", "s3://b/t", "--workdir", "/w", *both])
    policy = loop.trainer_policy("b", ("triton", "manifests", "runs"))
    resources = policy["Statement"][1]["Resource"]
    assert resources == ["arn:aws:s3:::b/triton/*", "arn:aws:s3:::b/manifests/*", "arn:aws:s3:::b/runs/*"]


# --- one run with a real cycle ------------------------------------------------------------------------------------


def test_a_run_publishes_new_items_uploads_them_and_loads_every_replica(
    s3: Any, tmp_path: Path, log_database: str, served_run: Path
) -> None:
    """The CronJob's run end to end but for the cluster: version 1 seeded as `loop seed` does it, listeners play a
    release, one run mirrors, refreshes the catalogue (real export and parity), uploads version 2 with its run, and
    pins every replica's ensembles to it; the cycle is in retrain_cycles."""
    from tests_support import on_database

    from trainer.artifacts import load_run

    async def empty(conn: Any) -> None:
        await conn.execute("TRUNCATE plays, feedback, impressions, retrain_cycles")

    on_database(log_database, empty)
    run_copy = tmp_path / "seed-run"
    shutil.copytree(served_run, run_copy)
    loop.upload_run(s3, BUCKET, 1, run_copy)
    assert s3_models.publish_run(s3, WHERE, run_copy, tmp_path / "seed").version == 1

    listeners = [str(u) for u in load_run(served_run).user_ids.ids[:12]]
    now = datetime.now(UTC)

    async def play(conn: Any) -> None:
        rows = [(f"{u}-{n}", now, u, "release-eks") for u in listeners for n in range(3)]
        await conn.executemany("INSERT INTO plays (event_id, ts, user_id, item_id) VALUES ($1, $2, $3, $4)", rows)

    on_database(log_database, play)
    uploaded_at_load: list[list[int]] = []

    def check(replica: FakeReplica, name: str) -> None:
        uploaded_at_load.append(s3_models.uploaded_versions(s3, WHERE))

    replicas = {f"10.0.0.{i}:8000": FakeReplica(f"r{i}", on_load=check) for i in (1, 2, 3)}
    replicas["10.0.0.4:8000"] = FakeReplica("r4", failures=ALWAYS)  # broken since it loaded version 1
    for address in ("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.4:8000"):
        replicas[address].pins = {key: {1} for key in FACTOR.ensembles}
    # 10.0.0.3 started since (its ensembles unpinned): the run pins it to version 1 before the cycle.
    result = loop.run_once(
        s3, WHERE, log_database, replicas, tmp_path / "work", kinds=("items",), sleep=lambda seconds: None
    )
    (cycle,) = result.cycles
    assert cycle.decision == "promoted", cycle.reason
    assert (cycle.published_version, cycle.items_added) == (2, 1)
    # Promoted (three replicas and S3 hold version 2), the replica still on version 1 named; the run exits 1.
    assert "replica 10.0.0.4:8000 did not complete the swap to version 2 (recsys_lookup:" in cycle.reason
    assert list(result.lagging) == ["10.0.0.4:8000"]
    assert not result.ok
    assert result.reconciled == {"10.0.0.3:8000": f"now serves {FACTOR.name} version 1"}
    reconciling = len(FACTOR.required_steps) * 2 + len(FACTOR.ensembles_over(FACTOR.required_steps))  # no index
    assert uploaded_at_load[:reconciling] == [[1]] * reconciling
    assert uploaded_at_load[reconciling:]
    assert all(seen == [1, 2] for seen in uploaded_at_load[reconciling:])
    assert s3_models.verify_version(s3, WHERE, 2) == []
    for address, replica in replicas.items():
        assert replica.ensemble_versions("recsys_a") == ({1} if address == "10.0.0.4:8000" else {2})
    # The next run warm-starts from version 2's run, restored from S3.
    again = loop.mirror(s3, WHERE, tmp_path / "next" / "mirror", tmp_path / "next" / "runs")
    assert "release-eks" in load_run(again.run_dir).item_ids.ids.astype(str).tolist()

    async def recorded(conn: Any) -> list[Any]:
        return list(await conn.fetch("SELECT kind, decision, published_version, reason FROM retrain_cycles"))

    ((kind, decision, published, reason),) = on_database(log_database, recorded)
    assert (kind, decision, published) == ("items", "promoted", 2)
    assert "10.0.0.4:8000" in reason


# --- the CronJob (k8s/overlays/eks/trainer.yaml), on the rendered overlay --------------------------------------


def _eks() -> list[dict[str, Any]]:
    from deploy_support import objects

    return objects("eks")


def _named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_cronjob_runs_the_loop_every_15_minutes_one_at_a_time_unprivileged() -> None:
    objs = _eks()
    cron = _named(objs, "CronJob", "trainer")
    assert cron["spec"]["schedule"] == "*/15 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] < 15 * 60, "a run must end before the next one is due"
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert re.fullmatch(r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/recsys-trainer:[\w.-]+", container["image"])
    command = [*container["command"], *container["args"]]
    assert command[:5] == ["python", "-m", "scripts.aws", "loop", "retrain"]
    args = build_parser().parse_args(command[3:])  # the command line parses as the image's CLI reads it
    assert args.repository == "$(MODEL_REPOSITORY)"
    assert args.workdir == Path("/work")
    assert args.replicas_service.startswith(f"{_named(objs, 'Service', 'triton-replicas')['metadata']['name']}.")
    env = {e["name"]: e for e in container["env"]}
    assert env["RECSYS_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "recsys-db", "key": "url"}
    assert env["MODEL_REPOSITORY"]["valueFrom"]["configMapKeyRef"] == {
        "name": "deploy-params",
        "key": "MODEL_REPOSITORY",
    }
    # Unprivileged as the serving workloads, with writable emptyDirs only where the loop writes.
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/work", "/tmp"}
    assert all("emptyDir" in v for v in pod["volumes"])
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])
    assert "tolerations" not in pod, "the job stays off the GPU nodes"


def test_trainer_reads_s3_through_its_own_role_in_tritons_account() -> None:
    objs = _eks()
    pod = _named(objs, "CronJob", "trainer")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    account = _named(objs, "ServiceAccount", pod["serviceAccountName"])
    triton = _named(objs, "ServiceAccount", "triton")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role == triton.rsplit("/", 1)[0] + "/recsys-trainer"


def test_headless_service_lists_every_triton_pod_by_its_http_port() -> None:
    objs = _eks()
    service = _named(objs, "Service", "triton-replicas")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "triton"}
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8000, "http")]


def test_trainer_reaches_triton_http_the_database_and_https_and_nothing_else() -> None:
    from test_kubernetes import reachable

    objs = _eks()
    trainer = {"app.kubernetes.io/name": "trainer"}
    apps = {name: {"app.kubernetes.io/name": name} for name in ("triton", "gateway", "feedback", "nginx", "prometheus")}
    assert reachable(objs, trainer, apps["triton"], 8000)
    for port in (8001, 8002):
        assert not reachable(objs, trainer, apps["triton"], port)
    for name, port in (("gateway", 8080), ("feedback", 8090), ("nginx", 8088), ("prometheus", 9090)):
        assert not reachable(objs, trainer, apps[name], port), name
    assert reachable(objs, trainer, None, 5432)  # the managed PostgreSQL (DATABASE_CIDR)
    assert reachable(objs, trainer, None, 443)  # S3 and STS
    assert not reachable(objs, trainer, None, 80)
    for name, labels in apps.items():
        assert not reachable(objs, labels, trainer, 8000), f"{name} reaches the job"
    # Triton's model control is open to the job only: not to the gateway, whose inference ports it keeps.
    policy = _named(objs, "NetworkPolicy", "trainer")
    params = dict(
        line.split("=", 1)
        for line in (deploy_support.ROOT / "k8s/overlays/eks/params.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert policy["spec"]["egress"][1]["to"][0]["ipBlock"]["cidr"] == params["DATABASE_CIDR"].strip()
