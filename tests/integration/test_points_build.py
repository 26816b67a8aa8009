"""3D-only banks end to end: a tiny synthetic Real3D-AD set -> build_bank -> evaluate, on two seeds; the
commands; calibration; a rotated cloud scored like its aligned twin; an image bank refused as a point bank."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from patchbank.bank import Manifest, load_bank, read_manifest
from patchbank.cli import run_command
from patchbank.errors import BankError, InputError
from patchbank.points.data import list_point_samples, read_point_sample
from patchbank.points.metrics import point_auroc
from patchbank.points.scorer import is_point_bank, load_point_scorer
from patchbank.scorer import load_scorer
from patchbank.weights import NO_WEIGHTS
from patchbank_builder.build import BuildRequest, BuildResult, build_bank
from patchbank_builder.calibrate import calibrate_version
from patchbank_builder.cli import BUILD, CALIBRATE, EVALUATE
from patchbank_builder.points import evaluate_point_version
from patchbank_builder.refresh import RefreshRequest, refresh_bank
from patchbank_synthetic.real3d import generate
from tests.conftest import CATEGORY

PART = "capsule"
POINTS = 8000  # per cloud: a build and its evaluation take about 2 s


@dataclass
class Built:
    seed: int
    data: Path
    banks: Path
    result: BuildResult


@pytest.fixture(scope="module", params=[0, 1], ids=["seed0", "seed1"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A bank of the capsule's four prototypes (random poses), evaluated on 5 test clouds per kind."""
    root = tmp_path_factory.mktemp(f"real3d-{request.param}")
    generate(root / "data", [PART], n_test=5, points=POINTS, seed=request.param, progress=False)
    req = BuildRequest(
        category=PART, data_root=root / "data", banks=root / "banks", method="point-fpfh", progress=False
    )
    return Built(request.param, root / "data", root / "banks", build_bank(req))


def test_a_point_bank_detects_defects_and_stores_its_evaluation(built: Built) -> None:
    data, banks, result = built.data, built.banks, built.result
    m = result.manifest
    assert m.input == "points" and m.method == "point-fpfh" and m.training.n_samples == 4
    member = m.members[0]
    assert member.features.extractor == "point-fpfh" and member.weights == NO_WEIGHTS
    assert member.coreset.n_patches == 4 * 2048 and member.coreset.size == int(0.1 * 4 * 2048)
    assert m.score_stats.source == "train-leave-one-out" and m.score_stats.n == 4
    ev = result.evaluation
    assert ev is not None and m.evaluation == ev.record()
    assert ev.image_auroc >= 0.8 and ev.pixel_auroc >= 0.8 and ev.au_pro >= 0.6  # chance: 0.5, 0.5, 0.15
    assert set(ev.per_defect) == {"bulge", "sink"} and ev.n_test == 15
    again = evaluate_point_version(banks, data, PART, progress=False)  # what `evaluate` computes, from disk
    assert (again.image_auroc, again.pixel_auroc, again.au_pro) == pytest.approx(
        (ev.image_auroc, ev.pixel_auroc, ev.au_pro)
    )
    written = read_manifest(banks / PART / m.version)
    assert written.evaluation is not None and written.evaluation.image_auroc == pytest.approx(ev.image_auroc)


def test_a_rotated_cloud_scores_like_its_aligned_twin(built: Built, tmp_path: Path) -> None:
    """The generator's random and aligned poses of one seed hold the same clouds: scored by the same bank,
    each cloud gets the same object score to within a tenth of the threshold (the capsule, symmetric about its
    axis, is voxelised about that axis differently in each pose) and marks the same points."""
    generate(tmp_path, [PART], n_test=5, points=POINTS, seed=built.seed, pose="aligned", progress=False)
    scorer = load_point_scorer(load_bank(built.banks, PART))
    threshold = scorer.bank.manifest.thresholds.image
    posed, aligned = (list_point_samples(r, PART, "test") for r in (built.data, tmp_path))
    for twin, ref in zip(posed, aligned, strict=True):
        (p, y), (q, z) = read_point_sample(twin), read_point_sample(ref)
        assert (y == z).all() and not np.allclose(p, q, atol=1.0)  # same labels, another pose
        a, b = scorer.predict([p])[0], scorer.predict([q])[0]
        assert abs(a.object_score - b.object_score) < 0.1 * threshold
        if y.any():
            assert point_auroc([y], [a.point_scores]) == pytest.approx(
                point_auroc([z], [b.point_scores]), abs=0.02
            )


def test_the_commands_build_and_evaluate_a_point_bank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate(tmp_path / "data", [PART], n_prototypes=2, n_test=2, points=4000, seed=3, progress=False)
    where = ["--category", PART, "--data-root", str(tmp_path / "data"), "--banks", str(tmp_path / "banks")]
    code = run_command(BUILD, [*where, "--method", "point-fpfh", "--point-fpfh.n-centres", "256", "--quiet"])
    assert code == 0 and "object threshold" in capsys.readouterr().out
    manifest = load_bank(tmp_path / "banks", PART).manifest
    assert manifest.members[0].features.options["n_centres"] == 256 and is_point_bank(
        tmp_path / "banks", PART
    )
    out = tmp_path / "ev.json"
    assert run_command(EVALUATE, [*where, "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "O-AUROC" in printed and "sink" in printed
    assert json.loads(out.read_text())["image_auroc"] == pytest.approx(manifest.evaluation.image_auroc)
    assert run_command(BUILD, [*where, "--method", "point-fpfh", "--fpfh.window", "3"]) == 2
    assert "fpfh is not part of point-fpfh" in capsys.readouterr().err
    assert run_command(EVALUATE, [*where, "--report", str(tmp_path / "report")]) == 2
    assert "a 3D-only bank has none" in capsys.readouterr().err


def test_calibration_keeps_a_point_bank(built: Built) -> None:
    banks, result = built.banks, built.result
    m = calibrate_version(banks, PART, result.manifest.version, target=0.05, activate=False)
    assert m.input == "points" and m.parent == result.manifest.version and m.calibration is not None
    assert m.evaluation is not None and m.evaluation.threshold == pytest.approx(m.thresholds.image)
    assert load_point_scorer(load_bank(banks, PART, m.version)).bank.manifest.thresholds == m.thresholds


def test_bad_clouds_and_image_banks_are_refused(built: Built, fpfh_build: tuple[Path, BuildResult]) -> None:
    scorer = load_point_scorer(load_bank(built.banks, PART))
    with pytest.raises(InputError, match=r"cloud\[1\] has 10 points"):
        scorer.predict([np.zeros((100, 3)) + np.arange(100)[:, None], np.zeros((10, 3))])
    image_banks, image = fpfh_build
    with pytest.raises(BankError, match="is not a 3D-only bank"):
        load_point_scorer(load_bank(image_banks, CATEGORY))
    assert not is_point_bank(image_banks, CATEGORY)
    old = image.manifest.model_dump(mode="json")
    del old["input"]
    assert Manifest.model_validate(old).input == "image"  # manifests written before the field


def test_image_only_commands_refuse_a_point_bank_with_a_reason(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    """calibrate --rule f1 and refresh-bank score images: a 3D-only bank is named as such, not reported as an
    unknown extractor."""
    with pytest.raises(BankError, match=r"capsule/v\d+ is a 3D-only bank \(point-fpfh\)"):
        load_scorer(built.banks, PART)
    with pytest.raises(BankError, match="3D-only bank"):
        refresh_bank(RefreshRequest(category=PART, banks=built.banks, data_root=built.data))
    code = run_command(CALIBRATE, ["--category", PART, "--banks", str(built.banks), "--rule", "f1"])
    assert code == 2 and "a 3D-only bank takes --rule target-frr" in capsys.readouterr().err
