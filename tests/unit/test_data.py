"""The MVTec 3D-AD reader: layout, masks, non-square images, and errors that name the path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from patchbank.data import has_split, list_samples, read_mask, read_rgb, read_xyz
from patchbank.errors import DataError
from patchbank.preprocess import prepare, resize_mask, resize_xyz
from tests.conftest import CATEGORY


@pytest.fixture
def root(demo_root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(demo_root, dst)
    return dst


def test_splits_kinds_and_order(demo_root: Path) -> None:
    test = list_samples(demo_root, CATEGORY, "test")
    assert test[0].kind == "good"
    assert sorted({r.kind for r in test}) == ["bump", "crack", "cut", "good", "hole", "stain"]
    assert all(r.label == (r.kind != "good") for r in test)
    assert len(list_samples(demo_root, CATEGORY, "train")) == 6
    assert has_split(demo_root, CATEGORY, "validation")


def test_non_square_rgb_and_xyz(demo_root: Path) -> None:
    ref = list_samples(demo_root, CATEGORY, "train")[0]
    assert read_rgb(ref.rgb).size == (160, 120)
    xyz = read_xyz(ref.xyz)
    assert xyz.shape == (120, 160, 3) and xyz.dtype == np.float32
    p = prepare(read_rgb(ref.rgb), xyz)
    assert p.rgb.shape == (3, 224, 224) and p.xyz.shape == (224, 224, 3) and p.input_size == (160, 120)


def test_masks_any_nonzero_is_anomalous(root: Path) -> None:
    ref = next(r for r in list_samples(root, CATEGORY, "test") if r.kind == "hole")
    gt = np.zeros((120, 160), np.uint8)
    gt[10:20, 30:50] = 253  # MVTec 3D-AD encodes the defect class as 253..255
    gt[50, 60] = 1
    Image.fromarray(gt).save(ref.gt)
    mask = read_mask(ref, (120, 160))
    assert mask.sum() == 10 * 20 + 1
    good = next(r for r in list_samples(root, CATEGORY, "test") if r.kind == "good")
    good.gt.unlink()  # type: ignore[union-attr]
    good = next(r for r in list_samples(root, CATEGORY, "test") if r.kind == "good")
    assert good.gt is None and not read_mask(good, (120, 160)).any()
    assert resize_mask(mask).shape == (224, 224)


def test_missing_category_names_what_exists(demo_root: Path) -> None:
    with pytest.raises(
        DataError, match=r"category 'cable_gland' not found: .*cable_gland.*found: bracket, puck"
    ):
        list_samples(demo_root, "cable_gland", "train")


def test_missing_and_empty_splits(root: Path) -> None:
    shutil.rmtree(root / CATEGORY / "validation")
    with pytest.raises(DataError, match=r"split 'validation' not found: .*validation"):
        list_samples(root, CATEGORY, "validation")
    for f in (root / CATEGORY / "train" / "good" / "rgb").iterdir():
        f.unlink()
    for f in (root / CATEGORY / "train" / "good" / "xyz").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"split 'train' of category 'puck' is empty: .*train"):
        list_samples(root, CATEGORY, "train")


def test_rgb_xyz_count_mismatch(root: Path) -> None:
    victim = root / CATEGORY / "train" / "good" / "xyz" / "003.tiff"
    victim.unlink()
    with pytest.raises(DataError, match=r"train/good: 6 rgb images but 5 xyz point clouds"):
        list_samples(root, CATEGORY, "train")


def test_unreadable_and_wrong_shaped_tiffs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match=r"cannot read xyz TIFF .*bad.tiff"):
        read_xyz(bad)
    flat = tmp_path / "flat.tiff"
    tifffile.imwrite(flat, np.zeros((20, 30), np.float32))
    with pytest.raises(DataError, match=r"flat.tiff: xyz must be an H x W x 3 .*\(20, 30\)"):
        read_xyz(flat)
    ints = tmp_path / "ints.tiff"
    tifffile.imwrite(ints, np.zeros((20, 30, 3), np.uint16), photometric="rgb")
    with pytest.raises(DataError, match="float coordinates"):
        read_xyz(ints)


def test_non_finite_points_become_missing(tmp_path: Path) -> None:
    xyz = np.full((10, 12, 3), 0.5, np.float32)
    xyz[2, 3] = (np.nan, 0.1, 0.5)
    xyz[4, 5, 2] = np.inf
    path = tmp_path / "nan.tiff"
    tifffile.imwrite(path, xyz, photometric="rgb")
    out = read_xyz(path)
    assert (out[2, 3] == 0).all() and (out[4, 5] == 0).all() and np.isfinite(out).all()


def test_xyz_resize_is_torch_nearest() -> None:
    """src = floor(dst * in / out): for 10 -> 4, rows 0, 2, 5, 7."""
    xyz = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 10, 3), np.float32)
    out = resize_xyz(xyz, 4)
    assert out[:, 0, 0].tolist() == [0.0, 2.0, 5.0, 7.0]
