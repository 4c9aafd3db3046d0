"""No secret in the repository: every file git tracks or would add (`git ls-files --cached --others
--exclude-standard`) is scanned for AWS keys, private keys, tokens and passwords in URLs or assignments.
Obvious placeholders (``${VAR}``, ``<password>``, ``changeme``, moto's ``testing``...) are allowed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_support import ROOT

PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"(?i)aws.{0,20}secret.{0,20}[:=]\s*[\"']?([A-Za-z0-9/+]{40})\b"),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^@\s/'\"]+)@"),
    "password assignment": re.compile(
        r"(?i)(?:password|passwd|secret|api_?key|token)\w*\s*[:=]\s*[\"']([^\"'\s]{6,})[\"']"
    ),
}
#: Values that are evidently not secrets: references to variables, templates and the usual stand-ins.
PLACEHOLDER = re.compile(
    r"(?i)^(?:\$|\{\{|<|%\(|\*+$|x+$|\.\.\.)|changeme|change-me|example|placeholder|dummy|fake|redacted|"
    r"your[-_]|^testing$|^test$|^secret$|^password$|^pass$"
)
MAX_BYTES = 2_000_000


def findings(path: Path, text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for kind, pattern in PATTERNS.items():
            for match in pattern.finditer(line):
                value = match.group(1) if pattern.groups else match.group(0)
                if value and (pattern.groups == 0 or not PLACEHOLDER.search(value)):
                    found.append(f"{path}:{number}: {kind}")
    return found


def repository_files() -> list[Path]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name]


def test_no_file_in_the_repository_holds_a_secret() -> None:
    problems = []
    files = repository_files()
    assert len(files) > 50
    for path in files:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        problems += findings(path.relative_to(ROOT), data.decode("utf-8", errors="replace"))
    assert not problems, "\n".join(problems)


# Built at run time, so that this file holds no literal secret for the scan above to find.
AWS_KEY = "AKIA" + "Q" * 16
FORTY_CHARACTERS = "wJalrXUtnFEMI" + "K7MDENGbPxRfiCY" + "Z" * 12


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (f"aws_access_key_id = {AWS_KEY}", "AWS access key id"),
        (f"aws_secret_access_key = {FORTY_CHARACTERS}", "AWS secret access key"),
        ("-----BEGIN " + "OPENSSH PRIVATE KEY-----", "private key"),
        ("gh" + "p_" + "a1" * 18, "GitHub token"),
        ("url: postgresql://recsys:" + "s3cr3tPa55" + "@db:5432/recsys", "password in a URL"),
        ('POSTGRES_PASSWORD: "' + "hunter2hunter2" + '"', "password assignment"),
    ],
)
def test_the_scan_catches_each_kind(line: str, kind: str) -> None:
    assert findings(Path("x"), line) == [f"x:1: {kind}"]


@pytest.mark.parametrize(
    "line",
    [
        "RECSYS_DATABASE_URL: postgresql://recsys:${RECSYS_DB_PASSWORD:?set it}@postgres:5432/recsys",
        "--from-literal=url=postgresql://recsys:<password>@db.example.com:5432/recsys",
        'password = "changeme"',
        "postgresql://recsys@127.0.0.1:5433/recsys",
        '("AWS_SECRET_ACCESS_KEY", "testing"),',
        "role-to-assume: ${{ vars.AWS_DEPLOY_ROLE_ARN }}",
    ],
)
def test_placeholders_pass(line: str) -> None:
    assert findings(Path("x"), line) == []
