"""deploy/: the systemd unit, the sample configuration and the container image's recipe,
checked as far as this machine can (no base image here to build the image itself)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from verifier.cli import main

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"


def test_the_sample_configuration_passes_config_check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("VERIFIER_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit) as exit_:
        main(["config", "check", "--config", str(DEPLOY / "verifier.toml")])
    assert 0 == exit_.value.code
    out = capsys.readouterr().out
    assert 'list_url = "https://sti-pa.example.net/api/v1/ca-list"' in out


def test_the_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    text = (DEPLOY / "verifier.service").read_text()
    for line in (
        "User=verifier",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/verifier",
    ):
        assert line in text.splitlines()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart exists: point it at this checkout's entry point
    entry = Path(sys.executable).with_name("verifier")
    unit = tmp_path / "verifier.service"
    unit.write_text(text.replace("/opt/verifier/.venv/bin/verifier", str(entry)))
    run = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (0, "") == (run.returncode, run.stderr.strip())


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    rows = [line.strip() for line in joined.splitlines()]
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (row.split(None, 1) for row in rows if row and not row.startswith("#"))
    ]


def test_the_containerfile_copies_what_exists_and_checks_readiness() -> None:
    steps = _instructions((DEPLOY / "Containerfile").read_text())
    copies = [args.split() for op, args in steps if op == "COPY"]
    sources = [p for args in copies if not args[0].startswith("--from") for p in args[:-1]]
    assert ["pyproject.toml", "README.md", "verifier", "deploy/verifier.toml"] == sources
    assert all((ROOT / p).exists() for p in sources)
    ops = dict(steps)
    assert "verifier" == ops["USER"]
    assert "/readyz" in ops["HEALTHCHECK"]
    assert '["/var/lib/verifier"]' == ops["VOLUME"]


def test_the_wheel_installs_into_a_clean_venv_and_runs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("verifier-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    # the dependencies from this environment (no index here), the package from the wheel only
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    run = subprocess.run(
        [env_dir / "bin" / "verifier", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert (0, "verifier") == (run.returncode, run.stdout.split()[0])
    where = subprocess.run(
        [python, "-c", "import verifier.http.app, verifier; print(verifier.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert where.startswith(site)
