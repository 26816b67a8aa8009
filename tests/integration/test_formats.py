"""Sensor formats end to end: the demo's test split converted to depth images, PLY, PCD and .npy scores like
its MVTec TIFFs; a bank built on depth images stores the camera, so a line may send a depth image alone;
and a cloud in millimetres is refused unless its unit is said, then scores like the metre cloud."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from patchbank import bank as bankfmt
from patchbank.cli import run_command
from patchbank.cloud_write import encode_cloud
from patchbank.clouds import Intrinsics
from patchbank.convert_cli import CONVERT
from patchbank.data import list_samples, read_xyz
from patchbank.errors import InputError
from patchbank.predict import Sample, predict
from patchbank.preprocess import valid_points
from patchbank.scorer import BankScorer, load_scorer
from patchbank_builder.build import BuildResult
from patchbank_builder.cli import BUILD
from tests.conftest import CATEGORY

FORMATS = ("depth-png", "depth-tiff", "ply", "pcd", "npy")
# How close each format's image scores come to the TIFF samples'. PLY, PCD and .npy carry the very same
# numbers: equal scores. A depth image keeps z only, and x = (u - cx) * z / fx recomputed from a float32 z
# differs from the stored float32 x by one rounding (<= 1.5e-8 m) on a few % of the points; FPFH is not
# continuous at that scale (a neighbour crossing the search radius changes a normal), and random one-ulp
# changes of the demo clouds move single image scores by up to 1.4e-2. So a depth TIFF scores within 1e-5
# on most samples (5 of 6: within 2e-6, the float32 resolution of the score) and within 1e-4 of the score
# on all (measured: 2.4e-5). A 16-bit PNG holds the demo's 0.5 m in steps of 10 um at best (the finest
# step that holds 0.51 m in 65535 units): up to 5 um per point, which moves the scores by up to 1.4% of
# the score (0.29 on scores of 20 to 31). Coarser steps do worse: 0.1 mm up to 45%, 1 mm (a common sensor
# default) 60 to 110%, which drowns the demo's sub-millimetre defects.
MEDIAN_TOLERANCE = {"ply": 0.0, "pcd": 0.0, "npy": 0.0, "depth-tiff": 1e-5, "depth-png": 0.3}  # absolute
RELATIVE_TOLERANCE = {"ply": 0.0, "pcd": 0.0, "npy": 0.0, "depth-tiff": 1e-4, "depth-png": 0.02}
DEMO_CAMERA = {"fx": 240.0, "fy": 240.0, "cx": 79.5, "cy": 59.5}  # 160 x 120: focal = 2 x 120, centre


@pytest.fixture(scope="module")
def converted(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo category's test split in each format, written by ``patchbank convert``."""
    out = {}
    for fmt in FORMATS:
        root = tmp_path_factory.mktemp(fmt)
        argv = [str(demo_root), str(root), "--format", fmt, "--categories", CATEGORY, "--splits", "test"]
        assert run_command(CONVERT, [*argv, "--quiet"]) == 0
        out[fmt] = root
    return out


@pytest.fixture(scope="module")
def scorer(fpfh_build: tuple[Path, BuildResult]) -> BankScorer:
    return load_scorer(fpfh_build[0], CATEGORY)


@pytest.fixture(scope="module")
def reference(scorer: BankScorer, demo_root: Path) -> dict[str, float]:
    """Image scores of the MVTec TIFF samples."""
    refs = list_samples(demo_root, CATEGORY, "test")
    return {p.sample_id or "": p.image_score for p in predict(scorer, [Sample.from_ref(r) for r in refs])}


def test_convert_fits_the_demo_camera_and_says_how_close(
    demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(demo_root), str(tmp_path), "--format", "depth-tiff", "--categories", CATEGORY, "--quiet"]
    assert run_command(CONVERT, argv) == 0
    printed = capsys.readouterr().out
    assert "fitted to the clouds, reprojection RMS" in printed and "0 points changed" in printed
    cam = Intrinsics.from_file(tmp_path / CATEGORY / "intrinsics.json")
    for key, value in DEMO_CAMERA.items():
        assert getattr(cam, key) == pytest.approx(value, abs=1e-6)
    assert (cam.width, cam.height, cam.depth_scale) == (160, 120, 1.0)
    assert sorted(p.name for p in (tmp_path / CATEGORY).iterdir()) == [
        "intrinsics.json",
        "test",
        "train",
        "validation",
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_scores_like_the_tiff(
    fmt: str, converted: dict[str, Path], scorer: BankScorer, reference: dict[str, float], demo_root: Path
) -> None:
    refs = list_samples(converted[fmt], CATEGORY, "test")
    assert {r.xyz.suffix for r in refs} == {".png" if fmt == "depth-png" else "." + fmt.split("-")[-1]}
    assert all((r.intrinsics is not None) == fmt.startswith("depth") for r in refs)
    scores = {p.sample_id: p.image_score for p in predict(scorer, [Sample.from_ref(r) for r in refs])}
    assert scores.keys() == reference.keys() and len(scores) >= 6
    diffs = np.array([abs(scores[k] - reference[k]) for k in scores])
    worst = max(d / reference[k] for d, k in zip(diffs, scores, strict=True))
    assert np.median(diffs) <= MEDIAN_TOLERANCE[fmt], f"{fmt}: image scores differ by {sorted(diffs)}"
    assert worst <= RELATIVE_TOLERANCE[fmt], f"{fmt}: image scores differ by up to {worst:.3g} of the score"
    if fmt in ("ply", "pcd", "npy"):  # the very same points
        for ref in refs:
            src = demo_root / CATEGORY / "test" / ref.kind / "xyz" / f"{ref.xyz.stem}.tiff"
            assert np.array_equal(read_xyz(ref.xyz), read_xyz(src))


def test_a_millimetre_cloud_is_refused_then_scored_with_its_unit(
    scorer: BankScorer, reference: dict[str, float], demo_root: Path
) -> None:
    """Converting back to metres rounds about 2% of the float32 coordinates by one ulp (the float32 cloud
    in mm or um already lost those bits): in millimetres no demo sample's score moves by 1e-5; in
    micrometres two move by FPFH's jumps (see above), within 1e-3 of the score."""
    refs = list_samples(demo_root, CATEGORY, "test")
    for unit, factor, name, tolerance in (("mm", 1e3, "millimetres", 0.0), ("um", 1e6, "micrometres", 1e-3)):
        samples = []
        for i, ref in enumerate(refs):
            scaled = (read_xyz(ref.xyz).astype(np.float64) * factor).astype(np.float32)
            fmt = ("tiff", "ply")[i % 2]
            data = encode_cloud(scaled, fmt)
            with pytest.raises(InputError) as err:
                predict(scorer, [Sample(ref.rgb.read_bytes(), data, f"a.{fmt}")])
            msg = str(err.value)
            assert msg.startswith(f"xyz looks like {name} (median depth ") and msg.endswith(
                f" m): send xyz_unit={unit}"
            ), msg
            assert "vs the bank's 0.5" in msg
            samples.append(Sample(ref.rgb.read_bytes(), data, f"a.{fmt}", ref.name, xyz_unit=unit))
        diffs = {
            p.sample_id or "": abs(p.image_score - reference[p.sample_id or ""])
            for p in predict(scorer, samples)
        }
        assert np.median(list(diffs.values())) <= 1e-5
        assert all(d <= 1e-5 or d <= tolerance * reference[k] for k, d in diffs.items()), diffs
    ref = refs[0]
    (p,) = predict(
        scorer, [Sample(ref.rgb.read_bytes(), encode_cloud(read_xyz(ref.xyz), "tiff"), xyz_unit="m")]
    )
    assert p.image_score == reference[ref.name]


def test_the_bank_records_its_clouds_scale(fpfh_build: tuple[Path, BuildResult], demo_root: Path) -> None:
    scale = fpfh_build[1].manifest.cloud_scale
    assert scale is not None and scale.n_clouds == 6
    clouds = [read_xyz(r.xyz) for r in list_samples(demo_root, CATEGORY, "train")]
    depth = np.median(np.concatenate([np.abs(c[valid_points(c), 2]) for c in clouds]))
    assert scale.median_depth == pytest.approx(depth, rel=0.02)  # a median of medians
    assert scale.median_spacing == pytest.approx(0.5 / DEMO_CAMERA["fx"], rel=0.1)  # a pixel at 0.5 m


def test_banks_without_a_scale_load_and_skip_the_check(
    fpfh_build: tuple[Path, BuildResult], scorer: BankScorer, demo_root: Path
) -> None:
    banks, result = fpfh_build
    data = json.loads(result.manifest.model_dump_json())
    del data["cloud_scale"], data["intrinsics"]
    assert bankfmt.Manifest.model_validate(data).cloud_scale is None  # an older bank's manifest
    old = BankScorer(
        bankfmt.Bank(
            scorer.bank.manifest.model_copy(update={"cloud_scale": None}), scorer.bank.indices, banks
        ),
        scorer.extractors,
    )
    ref = list_samples(demo_root, CATEGORY, "test", kinds=["hole"])[0]
    buf = io.BytesIO()
    tifffile.imwrite(buf, read_xyz(ref.xyz) * np.float32(1000), photometric="rgb")
    (p,) = predict(old, [Sample(ref.rgb.read_bytes(), buf.getvalue(), "a.tiff")])
    assert np.isfinite(p.image_score)


@pytest.mark.slow
def test_a_depth_bank_stores_its_camera_for_lines_that_send_depth_alone(
    demo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``build-bank --intrinsics FILE`` reads a dataset of 16-bit PNG depth images and keeps the camera."""
    data = tmp_path_factory.mktemp("depth-dataset")
    argv = [str(demo_root), str(data), "--format", "depth-png", "--categories", CATEGORY, "--quiet"]
    assert run_command(CONVERT, argv) == 0
    camera_file = tmp_path_factory.mktemp("camera") / "camera.json"
    (data / CATEGORY / "intrinsics.json").rename(camera_file)  # the flag, not the dataset, gives it
    camera = Intrinsics.from_file(camera_file)
    banks = tmp_path_factory.mktemp("depth-banks")
    flags = ["--category", CATEGORY, "--data-root", str(data), "--banks", str(banks), "--method", "fpfh"]
    assert (
        run_command(BUILD, [*flags, "--coreset.ratio", "0.1", "--intrinsics", str(camera_file), "--quiet"])
        == 0
    )
    scorer = load_scorer(banks, CATEGORY)
    manifest = scorer.bank.manifest
    assert manifest.intrinsics == camera and camera.depth_scale == 1e-5
    assert manifest.cloud_scale is not None and manifest.cloud_scale.median_depth == pytest.approx(
        0.5, abs=0.02
    )
    assert manifest.evaluation is not None and manifest.evaluation.image_auroc > 0.5
    refs = list_samples(data, CATEGORY, "test", intrinsics=camera)
    with_camera = predict(scorer, [Sample.from_ref(r) for r in refs])
    alone = predict(scorer, [Sample(r.rgb.read_bytes(), r.xyz.read_bytes(), r.xyz.name) for r in refs])
    assert [p.image_score for p in alone] == [p.image_score for p in with_camera]
    with pytest.raises(InputError, match=r"xyz_unit=mm applies to xyz clouds.*depth image"):
        predict(scorer, [Sample(refs[0].rgb.read_bytes(), refs[0].xyz.read_bytes(), xyz_unit="mm")])
    wrong = camera.model_copy(update={"depth_scale": 1e-2})  # a depth_scale 1000 times too large
    with pytest.raises(
        InputError,
        match=r"not at the bank's scale: its median depth is \d+\.?\d* m, the bank's 0\.5\d* m \(\d+ times\): check the intrinsics' depth_scale",
    ):
        predict(scorer, [Sample(refs[0].rgb.read_bytes(), refs[0].xyz.read_bytes(), intrinsics=wrong)])
