"""The wheel is complete: installed with its dependencies into a new environment outside the
checkout, ``unit-gateway demo`` runs (it starts ``unit-gateway run``, which loads the mitmproxy
script shipped in the package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _uv() -> str:
    found = shutil.which("uv")
    assert found, "uv is needed to build the wheel (python3 -m pip install uv)"
    return found


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    # Nothing of the checkout's environment: no virtual environment, no path into the repo.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = f"{result.stdout}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{output}"
    return result


def test_the_installed_wheel_runs_the_demo(tmp_path: Path) -> None:
    uv = _uv()
    dist = tmp_path / "dist"
    _run([uv, "build", "--wheel", "--out-dir", str(dist), str(REPO)], tmp_path, 300)
    (wheel,) = dist.glob("unit_gateway-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for shipped in (
        "unit_gateway/script.py",
        "unit_gateway/addon.py",
        "unit_gateway/mitm/gate.py",
        "unit_gateway/unit_api/data/route-scopes.yaml",
        "unit_gateway/unit_api/data/unit-routes.txt",
    ):
        assert shipped in names

    venv = tmp_path / "venv"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    _run([uv, "venv", "--python", version, str(venv)], tmp_path, 120)
    python = venv / "bin" / "python"
    _run([uv, "pip", "install", "--python", str(python), f"{wheel}[demo]"], tmp_path, 600)

    demo = _run(
        [str(venv / "bin" / "unit-gateway"), "demo", "--run-dir", str(tmp_path / "demo")],
        tmp_path,
        180,
    )
    assert "[8/8]" in demo.stdout
    # It ran the package installed there, not the checkout.
    script = (tmp_path / "demo" / "gateway.stdout").read_text()
    assert f"Loading script {venv}" in script
