"""The demo data generator: MVTec 3D-AD layout, file formats, determinism, and what each defect changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from bank_builder.demo_data import DEFECT_KINDS, generate, render_sample
from patchbank.errors import InputError

SIZE = (96, 80)  # width, height: not square on purpose


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate(
        root, ["puck", "bracket"], n_train=3, n_validation=2, n_test=2, size=SIZE, seed=4, progress=False
    )
    return root


def test_layout_and_counts(demo: Path) -> None:
    for cat in ("puck", "bracket"):
        assert len(list((demo / cat / "train" / "good" / "rgb").glob("*.png"))) == 3
        assert len(list((demo / cat / "validation" / "good" / "xyz").glob("*.tiff"))) == 2
        for kind in ("good", *DEFECT_KINDS):
            for sub, ext in (("rgb", "png"), ("xyz", "tiff"), ("gt", "png")):
                names = sorted(p.name for p in (demo / cat / "test" / kind / sub).iterdir())
                assert names == [f"000.{ext}", f"001.{ext}"]
    assert not (demo / "puck" / "train" / "good" / "gt").exists()
    assert not [p for p in demo.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_file_formats(demo: Path) -> None:
    rgb = np.asarray(Image.open(demo / "puck" / "train" / "good" / "rgb" / "000.png"))
    assert rgb.shape == (80, 96, 3) and rgb.dtype == np.uint8
    xyz = tifffile.imread(demo / "puck" / "train" / "good" / "xyz" / "000.tiff")
    assert xyz.shape == (80, 96, 3) and xyz.dtype == np.float32
    missing = (xyz == 0).all(axis=2)
    assert missing.any() and not missing.all()
    assert ((xyz == 0).any(axis=2) == missing).all()  # a missing point is exactly (0, 0, 0)
    z = xyz[~missing, 2]
    assert z.min() > 0.40 and z.max() < 0.60  # metres from the camera


def test_masks(demo: Path) -> None:
    for kind in DEFECT_KINDS:
        gt = np.asarray(Image.open(demo / "puck" / "test" / kind / "gt" / "000.png"))
        assert gt.shape == (80, 96) and gt.dtype == np.uint8 and gt.ndim == 2
        assert (gt > 0).any(), kind
        assert set(np.unique(gt).tolist()) <= {0, 253, 254, 255}
    good = np.asarray(Image.open(demo / "puck" / "test" / "good" / "gt" / "000.png"))
    assert not good.any()


def test_deterministic_and_independent_of_counts(demo: Path, tmp_path: Path) -> None:
    generate(tmp_path, ["puck"], n_train=1, n_validation=1, n_test=1, size=SIZE, seed=4, progress=False)
    for rel in (
        "train/good/rgb/000.png",
        "train/good/xyz/000.tiff",
        "test/hole/gt/000.png",
        "test/stain/rgb/000.png",
        "validation/good/xyz/000.tiff",
    ):
        assert (tmp_path / "puck" / rel).read_bytes() == (demo / "puck" / rel).read_bytes(), rel
    other = render_sample("puck", "good", split="train", index=0, size=SIZE, seed=5)
    assert not np.array_equal(other.rgb, np.asarray(Image.open(demo / "puck/train/good/rgb/000.png")))


def test_no_validation_split(tmp_path: Path) -> None:
    generate(tmp_path, ["puck"], n_train=2, n_validation=0, n_test=1, size=SIZE, progress=False)
    assert not (tmp_path / "puck" / "validation").exists()


@pytest.mark.parametrize("kind", ["hole", "crack"])
def test_geometric_defects_change_depth_inside_the_mask(kind: str) -> None:
    size = (200, 160)
    with_d = render_sample("bracket", kind, index=1, size=size, seed=2)
    without = render_sample("bracket", kind, index=1, size=size, seed=2, with_defect=False)
    mask = with_d.gt > 0
    both = mask & (with_d.xyz[..., 2] != 0) & (without.xyz[..., 2] != 0)
    assert both.sum() > 3
    dz = with_d.xyz[..., 2][both] - without.xyz[..., 2][both]
    assert dz.max() > 0.5e-3  # deeper (farther from the camera) by more than half a millimetre
    outside = ~mask & (with_d.xyz[..., 2] != 0) & (without.xyz[..., 2] != 0)
    assert np.abs(with_d.xyz[..., 2][outside] - without.xyz[..., 2][outside]).max() < 2e-3


def test_stain_changes_colour_only() -> None:
    size = (200, 160)
    with_d = render_sample("puck", "stain", index=0, size=size, seed=1)
    without = render_sample("puck", "stain", index=0, size=size, seed=1, with_defect=False)
    assert np.array_equal(with_d.xyz, without.xyz)
    mask = with_d.gt > 0
    diff = np.abs(with_d.rgb.astype(int) - without.rgb.astype(int)).sum(axis=2)
    assert diff[mask].mean() > 20 and diff[~mask].max() <= diff[mask].max()


def test_invalid_arguments() -> None:
    with pytest.raises(InputError, match="unknown demo category 'tire'; valid choices: puck, bracket"):
        generate(Path("/nonexistent"), ["tire"], progress=False)
    with pytest.raises(InputError, match="n_train"):
        generate(Path("/nonexistent"), ["puck"], n_train=0, progress=False)
