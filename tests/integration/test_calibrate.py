"""Calibration: new versions with the same index files, honest (cross-validated) false-reject rates, the F1
rule, build-bank --calibrate, and the service deciding with the calibrated thresholds (real banks, real HTTP
through the ASGI app)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from patchbank import bank as bankfmt
from patchbank.cli import run_command
from patchbank.data import list_samples
from patchbank_builder.build import BuildResult
from patchbank_builder.calibrate import calibrate_target_frr, calibrate_version
from patchbank_builder.cli import CALIBRATE, COMPARE, EVALUATE, build_bank_main
from patchbank_builder.thresholds import clopper_pearson, threshold_at_frr
from patchbank_client.client import PatchbankClient
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY


@pytest.fixture
def banks(fpfh_build: tuple[Path, BuildResult], tmp_path: Path) -> Path:
    dst = tmp_path / "banks"
    shutil.copytree(fpfh_build[0], dst)
    return dst


def test_calibrate_writes_a_new_version_with_the_same_index(
    banks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run_command(CALIBRATE, ["--category", CATEGORY, "--banks", str(banks), "--target-frr", "0.05"]) == 0
    )
    out = capsys.readouterr().out
    assert "calibrated puck/v0001 -> v0002" in out and "held-out FRR" in out and "95% CI" in out
    old = bankfmt.read_manifest(banks / CATEGORY / "v0001")
    new = bankfmt.read_manifest(banks / CATEGORY / "v0002")
    assert bankfmt.active_version(banks, CATEGORY) == "v0002" and new.parent == "v0001"
    assert new.files == old.files and new.members == old.members and new.score_stats == old.score_stats
    goods = new.score_stats.image_scores
    assert new.thresholds.image == threshold_at_frr(goods, 0.05).value
    assert new.thresholds.pixel == threshold_at_frr(new.score_stats.map_maxima, 0.05).value
    cal = new.calibration
    assert cal is not None and cal.rule == "target-frr" and cal.target_frr == 0.05
    fr = cal.false_rejects
    assert fr.n == len(goods) == 4 and fr.low <= 0.05 <= fr.high and "cross-validation" in fr.method
    ev = new.evaluation
    assert ev is not None and ev.threshold == new.thresholds.image
    goods_test = [s for s in ev.scores if s.kind == "good"]
    rejected = [s.image_score > new.thresholds.image for s in goods_test]
    assert ev.false_reject_rate == np.mean(rejected)
    assert tuple(ev.false_reject_ci) == clopper_pearson(sum(rejected), len(rejected))


def test_cross_validation_never_sees_the_fold_it_measures(banks: Path) -> None:
    """With 4 held-out goods (leave-one-out, 3 train goods each), the measured FRR counts the goods that
    exceed the threshold set from the other three: recomputed here by hand."""
    m = calibrate_target_frr(bankfmt.read_manifest(banks / CATEGORY / "v0001"), 0.01)
    goods = np.asarray(m.score_stats.image_scores)
    by_hand = sum(goods[i] > threshold_at_frr(np.delete(goods, i), 0.01).value for i in range(len(goods)))
    assert m.calibration is not None and m.calibration.false_rejects.rejects == by_hand


def test_f1_rule_on_labelled_anomalies(banks: Path, demo_root: Path) -> None:
    argv = ["--category", CATEGORY, "--banks", str(banks), "--data-root", str(demo_root), "--quiet"]
    assert run_command(CALIBRATE, [*argv, "--rule", "f1", "--labelled", "test"]) == 0
    m = bankfmt.read_manifest(banks / CATEGORY / "v0002")
    assert m.calibration is not None and m.calibration.rule == "f1" and m.calibration.labelled
    assert m.calibration.labelled["n"] == 6 and m.calibration.labelled["anomalous"] == 5
    ev = m.evaluation
    assert ev is not None
    labels = np.array([s.kind != "good" for s in ev.scores])
    called = np.array([s.image_score > m.thresholds.image for s in ev.scores])
    tp = (labels & called).sum()
    f1 = 2 * tp / (labels.sum() + called.sum())
    assert f1 == pytest.approx(
        m.calibration.labelled["image_f1"], abs=1e-6
    )  # the test split is the labelled one
    fr = m.calibration.false_rejects
    assert fr.n == 4 and "not used by the F1 rule" in fr.method


def test_too_few_held_out_goods_is_a_clear_error(banks: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vdir = banks / CATEGORY / "v0001"
    m = bankfmt.read_manifest(vdir)
    stats = m.score_stats.model_copy(update={"n": 2, "image_scores": [1.0, 2.0], "map_maxima": [1.0, 2.0]})
    bankfmt.write_version(banks, m.model_copy(update={"score_stats": stats}), bankfmt.copy_files_from(vdir))
    assert run_command(CALIBRATE, ["--category", CATEGORY, "--banks", str(banks)]) == 2
    assert "at least 3 goods" in capsys.readouterr().err
    assert run_command(CALIBRATE, ["--category", CATEGORY, "--banks", str(banks), "--target-frr", "0"]) == 2


def test_the_service_decides_with_the_calibrated_thresholds(banks: Path, demo_root: Path) -> None:
    m = calibrate_version(banks, CATEGORY, target=0.2)
    ref = list_samples(demo_root, CATEGORY, "test", kinds=["hole"])[0]
    with TestClient(create_app(ServiceSettings(banks=banks, device="cpu"))) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        info = client.get(f"/categories/{CATEGORY}").json()
        assert info["bank_version"] == m.version and info["threshold"] == m.thresholds.image
        assert info["calibration"]["target_frr"] == 0.2
        response = client.post(
            "/score",
            data={"category": CATEGORY, "map": "none"},
            files={"rgb": ("rgb.png", ref.rgb.read_bytes()), "xyz": ("xyz.tiff", ref.xyz.read_bytes())},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["threshold"] == m.thresholds.image and body["pixel_threshold"] == m.thresholds.pixel
    assert body["is_anomalous"] == (body["image_score"] > m.thresholds.image)


def test_the_client_reads_members_fusion_and_calibration(banks: Path) -> None:
    """The line's Python client over real HTTP (a live uvicorn) sees what calibrate wrote."""
    m = calibrate_version(banks, CATEGORY, target=0.05)
    with live_server(create_app(ServiceSettings(banks=banks, device="cpu"))) as url:
        info = PatchbankClient(url).category(CATEGORY)
    assert info.members == [{"name": "fpfh", "bank_size": m.members[0].coreset.size, "dim": 33}]
    assert info.fusion is None and info.calibration is not None
    assert info.calibration["false_rejects"]["n"] == 4 and info.threshold == m.thresholds.image


def test_build_bank_calibrate_and_evaluate_report_it(
    demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--category", CATEGORY, "--data-root", str(demo_root), "--banks", str(tmp_path), "--quiet"]
    assert build_bank_main([*common, "--method", "fpfh", "--fpfh.background", "--calibrate"]) == 0
    m = bankfmt.read_manifest(tmp_path / CATEGORY / "v0001")
    assert bankfmt.versions(tmp_path, CATEGORY) == ["v0001"] and m.calibration is not None
    assert m.members[0].features.options["background"]["plane_distance"] == 0.005
    capsys.readouterr()
    assert run_command(EVALUATE, [*common, "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "false-reject rate" in out and "miss rate" in out and "calibrated (target FRR 0.01)" in out
    assert json.loads((tmp_path / "e.json").read_text())["threshold"] == m.thresholds.image


@pytest.mark.slow
def test_compare_prints_every_method_per_defect(
    demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two methods (the rgb member with the packaged weights); banks are written inactive."""
    common = ["--category", CATEGORY, "--data-root", str(demo_root), "--banks", str(tmp_path), "--quiet"]
    argv = [*common, "--methods", "fpfh,rgb/fpfh"]
    assert run_command(COMPARE, [*argv, "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "fpfh" in lines[1] and "rgb/fpfh" in lines[1]
    for kind in ("bump", "crack", "cut", "hole", "stain", "all", "FRR / miss"):
        assert any(line.startswith(kind) for line in lines), kind
    (cost,) = [line.split()[4:] for line in lines if line.startswith("build s / vectors")]
    assert [float(cost[0]) > 0, float(cost[3]) > 0] == [True, True]  # "S / N" per method
    vectors = [int(cost[2]), int(cost[5])]
    assert vectors[0] < vectors[1]  # rgb/fpfh keeps an rgb bank besides its fpfh bank
    (speed,) = [line.split()[4:] for line in lines if line.startswith("score ms / sample")]
    assert all(float(v) > 0 for v in speed) and len(speed) == 2
    assert (
        bankfmt.active_version(tmp_path, CATEGORY) is None and len(bankfmt.versions(tmp_path, CATEGORY)) == 2
    )
    saved = json.loads((tmp_path / "c.json").read_text())
    assert [e["method"] for e in saved] == ["fpfh", "rgb/fpfh"] and "hole" in saved[1]["per_defect"]
    assert all(e["score_ms"] > 0 for e in saved)
    assert run_command(COMPARE, [*common, "--methods", "fpfh", "--rgb+fpfh.normalise", "modality"]) == 2
