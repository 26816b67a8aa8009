"""``patchbank preprocess`` end to end on a generated non-square category: the command, a bank built and
evaluated from its output, the bank's camera taken from the release's calibration file, and a depth image
scored with it; and ``scripts/mvtec3d_benchmark.sh`` refusing what is not MVTec 3D-AD."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from patchbank.camera_parameters import CALIBRATION_FILE, CameraParameters
from patchbank.cli import run_command
from patchbank.data import list_samples
from patchbank.dataset_prep_cli import PREPROCESS
from patchbank.predict import Sample, predict
from patchbank.scorer import load_scorer
from patchbank_builder.cli import EVALUATE, build_bank_main
from patchbank_synthetic.cli import MAKE_DEMO_DATA

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "mvtec3d_benchmark.sh"
CATEGORY = "bracket"


def test_preprocess_then_build_evaluate_and_score_a_non_square_category(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out, banks = tmp_path / "src", tmp_path / "out", tmp_path / "banks"
    demo = [str(src), "--categories", CATEGORY, "--size", "96", "--size", f"{CATEGORY}=128x96", "--quiet"]
    assert run_command(MAKE_DEMO_DATA, [*demo, "--train", "3", "--validation", "1", "--test", "1"]) == 0
    prep = [str(src), str(out), "--background.cluster-min-points", "10", "--quiet"]
    assert run_command(PREPROCESS, prep) == 0
    printed = capsys.readouterr().out
    assert f"{CATEGORY}: 10 samples (10 cleaned now, 0 already done)" in printed
    assert f"record: {out / '.patchbank-preprocess.json'}" in printed

    assert run_command(PREPROCESS, [*prep[:-1], "--rgb", "mask", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "rgb: link -> mask" in err and "--force" in err and "\n" not in err

    common = ["--category", CATEGORY, "--data-root", str(out), "--banks", str(banks), "--quiet"]
    assert build_bank_main([*common, "--method", "fpfh", "--coreset.ratio", "0.1"]) == 0
    assert "I-AUROC" in capsys.readouterr().out
    assert run_command(EVALUATE, common) == 0
    scorer = load_scorer(banks, CATEGORY)
    camera = CameraParameters.from_file(out / CATEGORY / CALIBRATION_FILE).intrinsics()
    assert scorer.bank.manifest.intrinsics == camera and (camera.width, camera.height) == (128, 96)

    ref = next(r for r in list_samples(out, CATEGORY, "test") if r.kind == "hole")
    depth = io.BytesIO()
    tifffile.imwrite(depth, tifffile.imread(ref.xyz)[..., 2])  # what a line sending depth images sends
    as_xyz, as_depth = predict(scorer, [Sample.from_ref(ref), Sample(ref.rgb.read_bytes(), depth.getvalue())])
    assert as_xyz.input_size == (128, 96) and as_xyz.anomaly_map is not None
    assert as_xyz.anomaly_map.shape == (96, 128)
    assert as_depth.image_score == pytest.approx(as_xyz.image_score, rel=1e-4)
    assert np.allclose(as_depth.map224, as_xyz.map224, rtol=1e-4, atol=1e-6)


def _mvtec_like(root: Path, categories: list[str], splits: tuple[str, ...]) -> None:
    for category in categories:
        for split in splits:
            (root / category / split).mkdir(parents=True)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "is not a directory"),
        ("demo", "is not MVTec 3D-AD: 10 category folders expected"),
        ("no-validation", "bagel has no validation/"),
        ("parent", "mvtec_3d_anomaly_detection"),
    ],
)
def test_the_benchmark_script_refuses_a_root_that_is_not_mvtec3d(
    layout: str, message: str, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    names = ["bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire"]
    if layout == "demo":
        _mvtec_like(root, ["puck", "bracket"], ("train", "validation", "test"))
    elif layout == "no-validation":
        _mvtec_like(root, names, ("train", "test"))
    elif layout == "parent":
        _mvtec_like(root / "mvtec_3d_anomaly_detection", names, ("train", "validation", "test"))
    work = tmp_path / "work"
    run = subprocess.run(
        ["bash", str(SCRIPT), str(root), str(work)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PATCHBANK": "false"},
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and not work.exists()


def test_the_benchmark_script_says_how_to_call_it() -> None:
    for argv in ([], ["a", "b", "c"], ["--gpu", "a"]):
        run = subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and "usage: " in run.stderr
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, timeout=60).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_benchmark_script_is_shellcheck_clean() -> None:
    lint = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout
