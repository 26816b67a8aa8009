"""The client-only install, for real: ``pip install`` of this repository without extras into a fresh venv
(the line PC's install), then its ``score`` command and ``PatchbankClient`` against a live service, and the
engine commands' one-line refusal.

The venv uses Python 3.12 when this machine has it (a line PC may run another Python than the service),
else the running interpreter. pip builds from a clean copy of the checkout (the files git knows, or would
add), so the build never writes ``build/`` or ``*.egg-info`` into the working tree, and files left in an old
``build/`` can never end up in the wheel.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest

from patchbank.data import list_samples
from patchbank_builder.build import BuildResult
from patchbank_client import PatchbankClient
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIENT_PYTHON = "3.12"
# What the engine extra brings (import names): none of it may reach a client-only install.
_COMPUTE = ("torch", "torchvision", "timm", "faiss", "open3d", "numba", "scipy", "sklearn", "safetensors")
_SERVICE = ("fastapi", "starlette", "uvicorn", "python_multipart", "prometheus_client", "redis")
ENGINE_MODULES = (*_COMPUTE, *_SERVICE)
BUILDER_COMMANDS = ("build", "evaluate", "calibrate", "compare", "publish")
COMMANDS = (*BUILDER_COMMANDS, "serve", "score", "make-demo-data", "bench")
# Which engine module the message names depends on the command's import order (torch, scipy, ...).
ENGINE_MESSAGE = re.compile(
    r"error: 'patchbank build' needs the engine \(module '(?P<module>[\w.]+)' is not installed\): "
    r"pip install 'patchbank\[engine\]'"
)
GIT_LS = ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
# Copying the checkout without git: what .gitignore leaves out, and what no build needs.
IGNORED = (".git", ".venv*", "venv", "demo", ".demo", ".*_cache", "__pycache__", "*.pyc")
IGNORED += ("build", "dist", "*.egg-info")


# --------------------------------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    """The environment for the venv's commands: nothing of this interpreter or of the user's settings."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PATCHBANK_")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def run(cmd: list[str | Path], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (bounded by ``timeout``) and return it, whatever its exit code."""
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _works(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import sys"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def client_python() -> str:
    """Python 3.12 on PATH or among pyenv's builds, else this interpreter."""
    name = f"python{CLIENT_PYTHON}"
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    builds = glob.glob(f"{pyenv_root}/versions/{CLIENT_PYTHON}.*/bin/{name}")
    builds = [b for b in builds if re.search(r"/versions/\d+\.\d+\.\d+/bin/", b)]  # not 3.13.0t and such
    builds.sort(key=lambda b: [int(n) for n in Path(b).parents[1].name.split(".")], reverse=True)
    for candidate in [shutil.which(name), *builds]:  # a pyenv shim of an unselected version does not run
        if candidate and _works(candidate):
            return candidate
    return sys.executable


def clean_copy(dst: Path) -> Path:
    """The checkout's files as a fresh clone with the working tree's edits would have them: what git tracks
    or would add, less venvs and build outputs (ignored or not)."""
    excludes = [a for pattern in IGNORED for a in ("-x", pattern)]
    try:
        listed = subprocess.run(
            [*GIT_LS, *excludes], capture_output=True, timeout=60, check=True
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(*IGNORED))
        return dst
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if any(fnmatch(part, pattern) for part in Path(rel).parts for pattern in IGNORED):
            continue  # tracked, but in a folder no build needs (-x leaves tracked files listed)
        if src.is_file():  # not a file deleted in the working tree but still in the index
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install .`` (no extras, not editable), pinned as CI pins, with no pip cache."""
    where = tmp_path_factory.mktemp("client-install")
    venv = where / "venv"
    ok(run([client_python(), "-m", "venv", venv], cwd=where, timeout=180))
    src = clean_copy(where / "src")
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--no-cache-dir", "-q"]
    ok(run([*pip, "-c", ROOT / "constraints.txt", src], cwd=where, timeout=900))
    return venv


@pytest.fixture(scope="module")
def service(fpfh_build: tuple[Path, BuildResult], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's FPFH bank of the demo category (a copy: other tests may add versions) under uvicorn."""
    banks = tmp_path_factory.mktemp("client-install-banks")
    shutil.copytree(fpfh_build[0] / CATEGORY, banks / CATEGORY)
    settings = ServiceSettings(banks=banks, device="cpu", log_json=False)
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def sample(demo_root: Path) -> tuple[Path, Path]:
    """One test sample with a defect (the first after the goods)."""
    refs = list_samples(demo_root, CATEGORY, "test")
    ref = next(r for r in refs if r.kind != "good")
    return ref.rgb, ref.xyz


# --------------------------------------------------------------------------------------------------- tests


def test_the_engine_is_not_installed(venv: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util, json, sys\n"
        f"print(json.dumps([m for m in {list(ENGINE_MODULES)!r} if importlib.util.find_spec(m) is not None]))\n"
    )
    proc = ok(run([venv / "bin" / "python", "-c", code], cwd=tmp_path))
    assert json.loads(proc.stdout) == []


def test_score_cli_gives_the_service_score(
    venv: Path, service: str, sample: tuple[Path, Path], tmp_path: Path
) -> None:
    rgb, xyz = sample
    with PatchbankClient(service) as client:
        expected = client.score(CATEGORY, rgb, xyz)
    score = [venv / "bin" / "score", "--url", service, "--category", CATEGORY]
    proc = ok(run([*score, "--rgb", rgb, "--xyz", xyz, "--json"], cwd=tmp_path))
    got = json.loads(proc.stdout)
    assert got["category"] == CATEGORY
    assert got["image_score"] == expected.image_score
    assert got["is_anomalous"] == expected.is_anomalous


def test_python_client_in_the_client_venv(
    venv: Path, service: str, sample: tuple[Path, Path], tmp_path: Path
) -> None:
    code = (
        "import json, sys\n"
        "import patchbank_client\n"
        "from patchbank_client import PatchbankClient\n"
        "url, category, rgb, xyz = sys.argv[1:]\n"
        "with PatchbankClient(url) as client:\n"
        "    r = client.score(category, rgb, xyz)\n"
        "print(json.dumps({'image_score': r.image_score, 'is_anomalous': r.is_anomalous,\n"
        "                  'module': patchbank_client.__file__}))\n"
    )
    rgb, xyz = sample
    proc = ok(run([venv / "bin" / "python", "-c", code, service, CATEGORY, rgb, xyz], cwd=tmp_path))
    got = json.loads(proc.stdout)
    assert Path(got["module"]).is_relative_to(venv)  # the installed copy, not this checkout
    with PatchbankClient(service) as client:
        expected = client.score(CATEGORY, rgb, xyz)
    assert (got["image_score"], got["is_anomalous"]) == (expected.image_score, expected.is_anomalous)


def test_engine_command_says_what_to_install(venv: Path, demo_root: Path, tmp_path: Path) -> None:
    # A complete request (data and banks given), so that the missing engine is the only thing wrong.
    build = [venv / "bin" / "patchbank", "build", "--category", CATEGORY]
    proc = run([*build, "--data-root", demo_root, "--banks", tmp_path / "banks"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    message = ENGINE_MESSAGE.fullmatch(lines[0])
    assert message, lines[0]
    assert message["module"].partition(".")[0] in ENGINE_MODULES, lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_help_lists_every_command(venv: Path, tmp_path: Path) -> None:
    proc = ok(run([venv / "bin" / "patchbank", "--help"], cwd=tmp_path))
    listed = set(re.findall(r"^\s{2,}([a-z][a-z-]*)\s", proc.stdout, flags=re.MULTILINE))
    assert set(COMMANDS) <= listed, proc.stdout
    assert proc.stderr == ""
