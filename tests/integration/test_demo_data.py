"""Tests of the synthetic MVTec 3D-AD generator: layout, file formats, physics, defects, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from patchbank.errors import InputError
from patchbank_synthetic import demo_data
from patchbank_synthetic.demo_data import DEFAULT_CATEGORIES, DEFECT_KINDS, GT_VALUES, generate, render_sample

SIZE = (96, 80)  # (width, height): deliberately not square
W, H = SIZE
COUNTS = {"n_train": 3, "n_validation": 2, "n_test": 2}
SEED = 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A small dataset of both default categories and the category folders generate() returned."""
    out = tmp_path_factory.mktemp("demo")
    written = generate(out, size=SIZE, seed=SEED, progress=False, **COUNTS)
    return out, written


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_xyz(path: Path) -> np.ndarray:
    return tifffile.imread(path)


def _far_from(mask: np.ndarray, margin: int = 3) -> np.ndarray:
    """True outside the mask's bounding box grown by ``margin`` pixels."""
    rows, cols = np.nonzero(mask)
    far = np.ones(mask.shape, dtype=bool)
    far[
        max(rows.min() - margin, 0) : rows.max() + margin + 1,
        max(cols.min() - margin, 0) : cols.max() + margin + 1,
    ] = False
    return far


# --------------------------------------------------------------------------------------------- layout


def test_layout_and_file_counts(dataset: tuple[Path, list[Path]]) -> None:
    out, written = dataset
    assert written == [out / name for name in DEFAULT_CATEGORIES]
    assert sorted(p.name for p in out.iterdir()) == sorted(DEFAULT_CATEGORIES)  # no temporary folders left
    for cat_dir in written:
        assert sorted(p.name for p in cat_dir.iterdir()) == ["calibration", "test", "train", "validation"]
        assert sorted(p.name for p in (cat_dir / "test").iterdir()) == sorted(["good", *DEFECT_KINDS])
        expected = {"train": COUNTS["n_train"], "validation": COUNTS["n_validation"]}
        for split, count in expected.items():
            folder = cat_dir / split / "good"
            assert sorted(p.name for p in folder.iterdir()) == ["rgb", "xyz"]
            assert sorted(p.name for p in (folder / "rgb").iterdir()) == [
                f"{i:03d}.png" for i in range(count)
            ]
            assert sorted(p.name for p in (folder / "xyz").iterdir()) == [
                f"{i:03d}.tiff" for i in range(count)
            ]
        for kind in ["good", *DEFECT_KINDS]:
            folder = cat_dir / "test" / kind
            names = [f"{i:03d}" for i in range(COUNTS["n_test"])]
            assert sorted(p.stem for p in (folder / "rgb").glob("*.png")) == names
            assert sorted(p.stem for p in (folder / "xyz").glob("*.tiff")) == names
            assert sorted(p.stem for p in (folder / "gt").glob("*.png")) == names


def test_rgb_is_8bit_three_channel_with_requested_size(dataset: tuple[Path, list[Path]]) -> None:
    out, _ = dataset
    for path in [out / "puck/train/good/rgb/000.png", out / "bracket/test/stain/rgb/001.png"]:
        with Image.open(path) as im:
            assert im.mode == "RGB"
            assert im.size == SIZE
            rgb = np.asarray(im)
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        assert rgb.std() > 5  # an object on a table, not a flat image


def test_xyz_is_float32_metres_with_exact_zero_dropouts(dataset: tuple[Path, list[Path]]) -> None:
    out, _ = dataset
    for path in [out / "puck/train/good/xyz/000.tiff", out / "bracket/test/hole/xyz/000.tiff"]:
        xyz = _read_xyz(path)
        assert xyz.shape == (H, W, 3) and xyz.dtype == np.float32
        missing = (xyz == 0).all(axis=2)
        valid = xyz[..., 2] > 0
        assert missing.any(), "structured-light dropouts must be exactly (0, 0, 0)"
        assert (missing | valid).all(), "a point is either complete or exactly (0, 0, 0)"
        assert 0.5 < valid.mean() < 0.99
        z = xyz[..., 2][valid]
        assert z.min() > 0.45 and z.max() < 0.55  # table about half a metre away
        x = xyz[..., 0][valid]
        assert x.min() < -0.08 and x.max() > 0.08  # about 0.3 m of table across the 96-pixel width
        assert np.isfinite(xyz).all()


def test_object_stands_above_the_table(dataset: tuple[Path, list[Path]]) -> None:
    """The image centre (object) is 4-30 mm closer to the camera than the table plane fitted to the border."""
    out, _ = dataset
    rows, cols = np.mgrid[0:H, 0:W]
    border = np.ones((H, W), dtype=bool)
    border[6:-6, 6:-6] = False
    for cat in DEFAULT_CATEGORIES:
        z = _read_xyz(out / cat / "train/good/xyz/000.tiff")[..., 2]
        table = border & (z > 0)
        design = np.stack([rows[table], cols[table], np.ones(table.sum())], axis=1)
        plane, *_ = np.linalg.lstsq(design, z[table], rcond=None)
        assert np.abs(design @ plane - z[table]).max() < 0.002  # the table is flat
        centre = z[H // 2 - 3 : H // 2 + 3, W // 2 - 3 : W // 2 + 3]
        height = plane @ [H / 2, W / 2, 1.0] - np.median(centre[centre > 0])
        assert 0.004 < height < 0.03


def test_gt_masks(dataset: tuple[Path, list[Path]]) -> None:
    out, _ = dataset
    for cat in DEFAULT_CATEGORIES:
        for index in range(COUNTS["n_test"]):
            with Image.open(out / cat / f"test/good/gt/{index:03d}.png") as im:
                assert im.mode == "L" and im.size == SIZE
                assert not np.asarray(im).any()
            for kind in DEFECT_KINDS:
                with Image.open(out / cat / f"test/{kind}/gt/{index:03d}.png") as im:
                    assert im.mode == "L" and im.size == SIZE
                    gt = np.asarray(im)
                assert gt.any(), f"{cat}/{kind}/{index}: empty defect mask"
                assert set(np.unique(gt)) == {0, GT_VALUES[kind]}
                assert 253 <= GT_VALUES[kind] <= 255
                assert (gt > 0).mean() < 0.05  # a local defect, not the whole object


def test_good_samples_alike_but_not_identical(dataset: tuple[Path, list[Path]]) -> None:
    out, _ = dataset
    for cat in DEFAULT_CATEGORIES:
        rgbs = [
            np.asarray(Image.open(out / cat / f"train/good/rgb/{i:03d}.png"), dtype=float) for i in range(2)
        ]
        diff = np.abs(rgbs[0] - rgbs[1])
        assert diff.mean() > 1.0
        assert abs(rgbs[0].mean() - rgbs[1].mean()) < 10
        xyzs = [_read_xyz(out / cat / f"train/good/xyz/{i:03d}.tiff") for i in range(2)]
        assert not np.array_equal(xyzs[0], xyzs[1])


def test_categories_differ(dataset: tuple[Path, list[Path]]) -> None:
    out, _ = dataset
    puck, bracket = (
        np.asarray(Image.open(out / c / "train/good/rgb/000.png"), dtype=float) for c in DEFAULT_CATEGORIES
    )
    assert np.abs(puck - bracket).mean() > 5


# --------------------------------------------------------------------------------------------- determinism


def test_generation_is_byte_identical(dataset: tuple[Path, list[Path]], tmp_path: Path) -> None:
    out, _ = dataset
    generate(tmp_path, size=SIZE, seed=SEED, progress=False, **COUNTS)
    assert _files(tmp_path) == _files(out)


def test_samples_do_not_depend_on_counts_or_order(dataset: tuple[Path, list[Path]], tmp_path: Path) -> None:
    out, _ = dataset
    generate(
        tmp_path,
        categories=("bracket", "puck"),
        n_train=1,
        n_validation=3,
        n_test=1,
        size=SIZE,
        seed=SEED,
        progress=False,
    )
    for cat in DEFAULT_CATEGORIES:
        for rel in [
            "train/good/rgb/000.png",
            "train/good/xyz/000.tiff",
            "validation/good/xyz/001.tiff",
            "test/crack/gt/000.png",
            "test/stain/rgb/000.png",
            "test/cut/xyz/000.tiff",
        ]:
            assert (tmp_path / cat / rel).read_bytes() == (out / cat / rel).read_bytes(), f"{cat}/{rel}"


def test_seed_changes_the_data(dataset: tuple[Path, list[Path]], tmp_path: Path) -> None:
    out, _ = dataset
    generate(
        tmp_path,
        categories=["puck"],
        n_train=1,
        n_validation=1,
        n_test=1,
        size=SIZE,
        seed=SEED + 1,
        progress=False,
    )
    assert (tmp_path / "puck/train/good/rgb/000.png").read_bytes() != (
        out / "puck/train/good/rgb/000.png"
    ).read_bytes()


def test_render_sample_matches_the_written_files(dataset: tuple[Path, list[Path]]) -> None:
    out, _ = dataset
    sample = render_sample("bracket", "bump", split="test", index=1, size=SIZE, seed=SEED)
    folder = out / "bracket/test/bump"
    assert np.array_equal(sample.rgb, np.asarray(Image.open(folder / "rgb/001.png")))
    assert np.array_equal(sample.xyz, _read_xyz(folder / "xyz/001.tiff"))
    assert np.array_equal(sample.gt, np.asarray(Image.open(folder / "gt/001.png")))


# --------------------------------------------------------------------------------------------- defects


@pytest.mark.parametrize("category", DEFAULT_CATEGORIES)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_stain_changes_colour_only(category: str, index: int) -> None:
    stained = render_sample(category, "stain", index=index, size=SIZE)
    clean = render_sample(category, "stain", index=index, size=SIZE, with_defect=False)
    assert not clean.gt.any()
    assert np.array_equal(stained.xyz, clean.xyz), "a stain must not change the point cloud"
    mask = stained.gt > 0
    diff = np.abs(stained.rgb.astype(int) - clean.rgb.astype(int)).sum(axis=2)
    assert diff[mask].mean() > 40  # clearly visible in RGB
    assert not diff[_far_from(mask)].any()


@pytest.mark.parametrize("category", DEFAULT_CATEGORIES)
@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize(("kind", "sign"), [("hole", 1), ("crack", 1), ("bump", -1)])
def test_geometric_defects_change_depth_inside_the_mask(
    category: str, index: int, kind: str, sign: int
) -> None:
    """Holes and cracks push the surface away from the camera (larger z), bumps towards it."""
    bad = render_sample(category, kind, index=index, size=SIZE)
    clean = render_sample(category, kind, index=index, size=SIZE, with_defect=False)
    mask = bad.gt > 0
    both = (bad.xyz[..., 2] > 0) & (clean.xyz[..., 2] > 0)
    dz = (bad.xyz[..., 2] - clean.xyz[..., 2])[mask & both]
    assert dz.size > 0
    assert (sign * dz).max() > 0.0005  # at least half a millimetre somewhere in the defect
    far = _far_from(mask) & both
    assert np.array_equal(bad.xyz[far], clean.xyz[far])


@pytest.mark.parametrize("category", DEFAULT_CATEGORIES)
def test_holes_and_cracks_are_faint_in_rgb_compared_with_stains(category: str) -> None:
    def rgb_change(kind: str) -> float:
        changes = []
        for index in range(3):
            bad = render_sample(category, kind, index=index, size=(200, 160))
            clean = render_sample(category, kind, index=index, size=(200, 160), with_defect=False)
            diff = np.abs(bad.rgb.astype(int) - clean.rgb.astype(int)).sum(axis=2)
            changes.append(diff[bad.gt > 0].mean())
        return float(np.mean(changes))

    stain = rgb_change("stain")
    assert rgb_change("hole") < stain / 3
    assert rgb_change("crack") < stain / 2


@pytest.mark.parametrize("category", DEFAULT_CATEGORIES)
def test_cut_removes_material_at_the_edge(category: str) -> None:
    size = (200, 160)
    for index in range(2):
        bad = render_sample(category, "cut", index=index, size=size)
        clean = render_sample(category, "cut", index=index, size=size, with_defect=False)
        mask = bad.gt > 0
        both = (bad.xyz[..., 2] > 0) & (clean.xyz[..., 2] > 0) & mask
        if both.any():  # the surface drops towards the table where both clouds have a point
            assert (bad.xyz[..., 2] - clean.xyz[..., 2])[both].max() > 0.002
        # the table shows through: the cut pixels get darker (table is dark grey, objects light)
        assert bad.rgb[mask].astype(float).mean() < clean.rgb[mask].astype(float).mean() - 20
        # it touches the outline: some neighbouring pixel outside the mask is bare table
        grown = np.zeros_like(mask)
        grown[1:-1, 1:-1] = mask[:-2, 1:-1] | mask[2:, 1:-1] | mask[1:-1, :-2] | mask[1:-1, 2:]
        ring = grown & ~mask
        assert (bad.rgb[ring].astype(float).mean(axis=1) < 100).any()


def test_width_different_from_height_portrait() -> None:
    sample = render_sample("puck", "crack", size=(60, 80))
    assert sample.rgb.shape == (80, 60, 3)
    assert sample.xyz.shape == (80, 60, 3)
    assert sample.gt.shape == (80, 60)
    assert sample.gt.any()


# --------------------------------------------------------------------------------------------- writing


def test_replaces_an_existing_category(tmp_path: Path) -> None:
    stale = tmp_path / "puck"
    stale.mkdir()
    (stale / "stale.txt").write_text("old")
    written = generate(
        tmp_path, categories=["puck"], n_train=1, n_validation=1, n_test=1, size=SIZE, progress=False
    )
    assert written == [stale]
    assert not (stale / "stale.txt").exists()
    assert (stale / "train/good/rgb/000.png").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["puck"]


def test_a_crash_leaves_no_half_written_category(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "puck"
    old.mkdir()
    (old / "keep.txt").write_text("old")
    real_write = demo_data._write_sample
    calls = []

    def failing_write(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(demo_data, "_write_sample", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(
            tmp_path, categories=["puck"], n_train=4, n_validation=1, n_test=1, size=SIZE, progress=False
        )
    assert [p.name for p in tmp_path.iterdir()] == ["puck"]  # no temporary folder left behind
    assert [p.name for p in old.iterdir()] == ["keep.txt"]  # the previous category is untouched


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(tmp_path, categories=["bracket"], n_train=1, n_validation=1, n_test=1, size=SIZE, progress=True)
    assert "8/8" in capsys.readouterr().err
    generate(tmp_path, categories=["bracket"], n_train=1, n_validation=1, n_test=1, size=SIZE, progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"categories": ["puck", "gizmo"]}, ["'gizmo'", "puck", "bracket"]),
        ({"categories": []}, ["puck", "bracket"]),
        ({"n_train": 0}, ["n_train", "0"]),
        ({"n_validation": -2}, ["n_validation", "-2"]),
        ({"n_test": 1.5}, ["n_test", "1.5"]),
        ({"size": (0, 80)}, ["width", "0"]),
        ({"size": (96, -1)}, ["height", "-1"]),
        ({"size": (96,)}, ["(96,)"]),
        ({"seed": -1}, ["seed", "-1"]),
    ],
)
def test_invalid_arguments_raise_input_error(
    tmp_path: Path, kwargs: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(InputError) as info:
        generate(tmp_path / "out", **{"size": SIZE, "progress": False, **kwargs})  # type: ignore[arg-type]
    for word in words:
        assert word in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written before validation passed


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"category": "gizmo"}, ["gizmo", "puck"]),
        ({"category": "puck", "kind": "scratch"}, ["scratch", "hole", "stain"]),
        ({"category": "puck", "kind": "hole", "split": "train"}, ["hole", "good"]),
        ({"category": "puck", "split": "val"}, ["val", "validation"]),
    ],
)
def test_render_sample_rejects_bad_names(kwargs: dict[str, str], words: list[str]) -> None:
    with pytest.raises(InputError) as info:
        render_sample(size=SIZE, **kwargs)  # type: ignore[arg-type]
    for word in words:
        assert word in str(info.value)


def test_no_validation_split(tmp_path: Path) -> None:
    """n_validation=0 writes no validation folder: banks then hold out training samples one at a time."""
    generate(tmp_path, ["puck"], n_train=2, n_validation=0, n_test=1, size=(64, 48), progress=False)
    assert not (tmp_path / "puck" / "validation").exists()
    assert len(list((tmp_path / "puck" / "train" / "good" / "rgb").iterdir())) == 2
