"""The Real3D-AD layout as its reference reader reads it, on files the synthetic generator writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from patchbank.errors import DataError
from patchbank.points.data import (
    defect_kind,
    is_point_dataset,
    list_point_categories,
    list_point_samples,
    point_digest,
    read_cloud,
    read_point_sample,
)
from patchbank_synthetic.real3d import SHAPES, generate, make_cloud


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real3d")
    generate(out, ["capsule", "torus"], n_prototypes=3, n_test=2, points=300, seed=4, progress=False)
    return out


def test_the_layout_is_recognised(root: Path, demo_root: Path) -> None:
    assert is_point_dataset(root, "capsule") and list_point_categories(root) == ["capsule", "torus"]
    assert not is_point_dataset(demo_root, "puck")  # MVTec 3D-AD: train/good/xyz
    assert not is_point_dataset(root, "absent") and list_point_categories(root / "nowhere") == []


def test_samples_follow_the_reference_reader(root: Path) -> None:
    train = list_point_samples(root, "capsule", "train")
    assert [r.name for r in train] == ["train/0_template", "train/1_template", "train/2_template"]
    test = list_point_samples(root, "capsule", "test")
    assert [(r.kind, r.path.name) for r in test] == [
        ("good", "0_good.pcd"),
        ("good", "1_good.pcd"),
        ("bulge", "2_bulge.pcd"),
        ("bulge", "3_bulge.pcd"),
        ("sink", "4_sink.pcd"),
        ("sink", "5_sink.pcd"),
    ]
    assert all((r.label_file is None) == (r.kind == "good") for r in test)
    assert test[2].label_file == root / "capsule" / "gt" / "2_bulge.txt" and test[2].label == 1


def test_defective_clouds_are_read_from_their_label_files(root: Path) -> None:
    good, bulge = (list_point_samples(root, "capsule", "test")[i] for i in (0, 2))
    points, labels = read_point_sample(good)
    assert points.shape == (300, 3) and not labels.any()
    points, labels = read_point_sample(bulge)
    expected, truth = make_cloud(SHAPES["capsule"], "bulge", "test", 0, 300, 4, "random")
    np.testing.assert_array_equal(points, expected)
    np.testing.assert_array_equal(labels, truth)
    np.testing.assert_array_equal(read_cloud(bulge.path), expected)  # the .pcd holds the same points


def test_name_rules(tmp_path: Path, root: Path) -> None:
    assert [defect_kind(s) for s in ("12_good", "396_bulge_cut", "7_sink_copy", "8_crack", "9")] == [
        "good",
        "bulge",
        "sink",
        "crack",
        "defect",
    ]
    cat = tmp_path / "part"
    shutil.copytree(root / "capsule", cat)
    (cat / "train" / "notes.pcd").write_bytes((cat / "train" / "0_template.pcd").read_bytes())
    (cat / "test" / "0_template.pcd").write_bytes(b"skipped: 'temp' in the name")
    assert len(list_point_samples(tmp_path, "part", "train")) == 3  # only the templates
    assert len(list_point_samples(tmp_path, "part", "test")) == 6
    (cat / "gt" / "2_bulge.txt").unlink()
    with pytest.raises(DataError, match=r"2_bulge\.pcd has no labels"):
        list_point_samples(tmp_path, "part", "test")


def test_missing_things_name_the_path(root: Path) -> None:
    with pytest.raises(DataError, match=r"category 'plane' not found.*capsule, torus"):
        list_point_samples(root, "plane", "train")
    with pytest.raises(DataError, match="unknown split 'validation'"):
        list_point_samples(root, "capsule", "validation")


def test_the_digest_follows_the_files(root: Path, tmp_path: Path) -> None:
    refs = list_point_samples(root, "capsule", "train")
    assert point_digest(refs) == point_digest(list_point_samples(root, "capsule", "train"))
    assert point_digest(refs) != point_digest(refs[:2])
