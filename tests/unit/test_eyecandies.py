"""The Eyecandies reader against the renderer it was generated from, the published camera against a
re-implementation of the official depth-to-point-cloud stage, and clear errors for malformed samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from patchbank.errors import DataError, InputError
from patchbank.eyecandies import (
    MASK_ITEMS,
    ON_AXIS,
    EyecandiesRef,
    is_anomalous,
    list_categories,
    list_samples,
    list_splits,
    read_depth_info,
    read_sample,
)
from patchbank.preprocess import valid_points
from patchbank_synthetic.demo_data import GOOD
from patchbank_synthetic.eyecandies import SHAPES, generate, source_of

SIZE = (96, 80)  # (width, height): not square, so cx and cy differ
CATEGORY = "Confetto"
COUNTS = {"n_train": 2, "n_validation": 1, "n_test": 2}  # test_public: good, bad, good, bad
ITEMS = sorted(
    [
        *(f"image_{i}.png" for i in range(6)),
        "depth.png",
        "info_depth.yaml",
        "normals.png",
        "pose.txt",
        "obj_params.yaml",
        "metadata.yaml",
        *(f"{m}.png" for m in MASK_ITEMS),
    ]
)


@pytest.fixture(scope="module", params=[0, 7], ids=lambda s: f"seed{s}")
def generated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    root = tmp_path_factory.mktemp("eyecandies")
    generate(root, [CATEGORY], size=SIZE, seed=request.param, progress=False, **COUNTS)
    return root, request.param


def _tolerance(ref: EyecandiesRef, xyz: np.ndarray) -> float:
    """Half a raw depth step, carried to x and y by the ray's slope, plus float32 rounding (metres)."""
    step = read_depth_info(ref.item("info_depth.yaml")).normalization.max / 65535
    valid = valid_points(xyz)
    slope = np.abs(xyz[valid][:, :2] / xyz[valid][:, 2:]).max()
    return step / 2 * (1 + slope) + 1e-6


def _pose(ref: EyecandiesRef) -> np.ndarray:
    return np.loadtxt(ref.item("pose.txt"))


def _copy_sample(root: Path, tmp_path: Path, split: str = "test_public", index: int = 1) -> EyecandiesRef:
    """One generated sample alone in a fresh root under ``tmp_path``, to be broken."""
    ref = list_samples(root, CATEGORY, split)[index]
    data = tmp_path / CATEGORY / split / "data"
    data.mkdir(parents=True)
    for path in ref.folder.glob(f"{ref.prefix}_*"):
        shutil.copy(path, data / path.name)
    shutil.copy(root / CATEGORY / "intrinsics.json", tmp_path / CATEGORY / "intrinsics.json")
    return list_samples(tmp_path, CATEGORY, split)[0]


# --------------------------------------------------------------------------------------------- layout


def test_the_released_layout(generated: tuple[Path, int]) -> None:
    root, _ = generated
    assert list_categories(root) == [CATEGORY]
    assert list_splits(root, CATEGORY) == ["train", "val", "test_public"]
    expected = {
        "train": COUNTS["n_train"],
        "val": COUNTS["n_validation"],
        "test_public": 2 * COUNTS["n_test"],
    }
    for split, count in expected.items():
        refs = list_samples(root, CATEGORY, split)
        assert [r.index for r in refs] == list(range(count))
        names = sorted(p.name for p in refs[0].folder.iterdir())
        assert names == sorted(f"{r.prefix}_{item}" for r in refs for item in ITEMS)  # 17 items a sample
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_the_reader_gives_back_the_rendered_sample(generated: tuple[Path, int]) -> None:
    root, seed = generated
    for split in ("train", "val", "test_public"):
        for ref in list_samples(root, CATEGORY, split):
            call = source_of(CATEGORY, split, ref.index, SIZE, seed)
            rendered = call.render()  # the demo renderer's own sample, not read from the files
            got = read_sample(ref, lighting=5)
            assert got.xyz.dtype == np.float32 and got.xyz.shape == (SIZE[1], SIZE[0], 3)
            assert np.array_equal(valid_points(got.xyz), valid_points(rendered.xyz))
            assert not valid_points(rendered.xyz).all()  # the renderer's dropouts come back as (0, 0, 0)
            assert np.abs(got.xyz - rendered.xyz).max() <= _tolerance(ref, rendered.xyz)
            assert np.array_equal(got.rgb, rendered.rgb)  # image_5, global lighting, is the render
            assert got.gt is not None and set(np.unique(got.gt)) <= {0, 255}
            assert np.array_equal(got.gt > 0, rendered.gt > 0)
            assert is_anomalous(ref) == (call.kind != GOOD) == bool(rendered.gt.any())


def test_the_world_frame_is_the_table(generated: tuple[Path, int]) -> None:
    root, seed = generated
    ref = list_samples(root, CATEGORY, "train")[0]
    rendered = source_of(CATEGORY, "train", 0, SIZE, seed).render()
    pose = _pose(ref)
    assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-9)  # a rigid motion
    assert 0.48 < pose[2, 3] < 0.52  # the demo camera stands 0.49-0.51 m above the table
    world = read_sample(ref, frame="world").xyz
    valid = valid_points(rendered.xyz)
    expected = rendered.xyz[valid].astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]
    assert np.abs(world[valid] - expected).max() <= _tolerance(ref, rendered.xyz)
    border = np.zeros(valid.shape, dtype=bool)
    border[:4], border[-4:], border[:, :4], border[:, -4:] = True, True, True, True
    assert np.median(np.abs(world[border & valid][:, 2])) < 1e-3  # table points at height 0


def test_each_spotlight_lights_the_surfaces_facing_it(generated: tuple[Path, int]) -> None:
    root, _ = generated
    ref = list_samples(root, CATEGORY, "train")[1]
    normals = np.asarray(Image.open(ref.item("normals.png")), dtype=np.float64) / 127.5 - 1.0
    normals = normals @ np.diag([1.0, -1.0, -1.0])  # the published recipe: Y and Z flipped to the camera's
    images = [
        np.asarray(Image.open(ref.item(f"image_{i}.png")), dtype=np.float64).sum(axis=2) for i in range(6)
    ]
    for axis, (towards, away) in ((0, (2, 4)), (1, (1, 3))):  # x: right, left; y (down): bottom, top
        facing, opposite = normals[..., axis] > 0.3, normals[..., axis] < -0.3
        assert facing.sum() >= 5 and opposite.sum() >= 5
        assert (images[towards][facing] > images[away][facing]).mean() > 0.9
        assert (images[away][opposite] > images[towards][opposite]).mean() > 0.9


def test_categories_and_seeds_draw_their_own_samples(tmp_path: Path) -> None:
    small = {"size": (48, 40), "n_train": 1, "n_validation": 0, "n_test": 1, "progress": False}
    generate(tmp_path / "a", ["Confetto", "marshmallow"], seed=3, **small)  # names as ec-get takes them
    generate(tmp_path / "b", ["Confetto"], seed=3, **small)
    generate(tmp_path / "c", ["Confetto"], seed=4, **small)
    assert SHAPES["Confetto"] == SHAPES["Marshmallow"]

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a, b, c = (
        files(tmp_path / "a" / "Confetto"),
        files(tmp_path / "b" / "Confetto"),
        files(tmp_path / "c" / "Confetto"),
    )
    assert a == b  # the same seed writes the same bytes, whatever else is generated
    assert a.keys() == c.keys() and a != c
    assert files(tmp_path / "a" / "Marshmallow") != a
    with pytest.raises(InputError, match="unknown Eyecandies category 'Toffee'"):
        generate(tmp_path / "d", ["Toffee"], **small)


# --------------------------------------------------------------------------------------------- the released camera


def _official_depth2pc(depth: np.ndarray, pose: np.ndarray, focal: float = 711.11) -> np.ndarray:
    """eyecan-ai/eyecandies eyecandies/stages/depth.py, DepthToPCStage._depth_to_pointcloud, as written
    there (valid = depth > 0), for the whole grid: (H * W, 3)."""
    height, width = depth.shape
    k = np.array([[focal, 0, width / 2, 0], [0, focal, height / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    flat = depth.reshape(-1)
    xs = np.tile(np.arange(width, dtype=np.float64), height)
    ys = np.repeat(np.arange(height, dtype=np.float64), width)
    with np.errstate(divide="ignore"):
        grid = np.stack([xs, ys, np.ones_like(xs), 1.0 / flat])
    hom = pose @ np.linalg.inv(k) @ grid
    return (flat.reshape(-1, 1) * hom.T)[:, :3]


def _write_released(tmp_path: Path, raw: np.ndarray, lo: float, hi: float, pose: np.ndarray) -> EyecandiesRef:
    data = tmp_path / "CandyCane" / "test_private" / "data"
    data.mkdir(parents=True)
    Image.fromarray(raw).save(data / "07_depth.png")
    (data / "07_info_depth.yaml").write_text(yaml.safe_dump({"normalization": {"min": lo, "max": hi}}))
    np.savetxt(data / "07_pose.txt", pose)
    rgb = np.zeros((*raw.shape, 3), np.uint8)
    Image.fromarray(rgb).save(data / "07_image_4.png")
    return list_samples(tmp_path, "CandyCane", "test_private")[0]


def test_the_published_camera_is_the_official_stage(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 65536, size=(512, 512)).astype(np.uint16)  # the released size
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = q * np.sign(np.linalg.det(q)), rng.normal(size=3)
    lo, hi = 0.42, 0.63
    ref = _write_released(tmp_path, raw, lo, hi, pose)
    assert ref.index == 7 and ref.camera is None
    depth = raw.astype(np.float64) / 65535.0 * (hi - lo) + lo  # docs/download.md, load_and_convert_depth
    for frame, applied in (("camera", np.eye(4)), ("world", pose)):
        got = read_sample(ref, frame=frame)
        assert got.gt is None  # test_private: no mask
        expected = _official_depth2pc(depth, applied).reshape(512, 512, 3)
        assert valid_points(got.xyz).all()  # min > 0: every pixel is measured
        on_axis = np.isclose(expected, 0.0, atol=1e-12)  # x on column 256, y on row 256 (camera frame)
        assert frame == "world" or (on_axis[:, 256, 0].all() and on_axis[256, :, 1].all())
        assert np.allclose(got.xyz[on_axis], ON_AXIS)
        assert np.allclose(got.xyz, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(DataError, match=r"cannot tell whether .*07_\* is anomalous"):
        is_anomalous(ref)


def test_depth_at_a_zero_minimum_is_missing(tmp_path: Path) -> None:
    raw = np.full((40, 48), 30000, np.uint16)
    raw[5:9, 10:20] = 0
    got = read_sample(_write_released(tmp_path, raw, 0.0, 1.0, np.eye(4))).xyz
    assert np.array_equal(~valid_points(got), raw == 0)
    assert (got[raw == 0] == 0).all()


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("item", "content", "message"),
    [
        (
            "info_depth.yaml",
            "normalization: {min: 0.7, max: 0.5}",
            r"info_depth.yaml: normalization: .*max \(0.5\) must be greater",
        ),
        (
            "info_depth.yaml",
            "normalization: {min: 0.5}",
            r"info_depth.yaml: normalization.max: Field required",
        ),
        ("info_depth.yaml", "normalization: [0.5, 0.7", r"info_depth.yaml is not valid YAML"),
        ("info_depth.yaml", "normalization: {min: .nan, max: 0.7}", r"info_depth.yaml: normalization.min"),
        ("depth.png", None, r"missing file .*_depth.png"),
        ("depth.png", b"not a png", r"_depth.png"),
        ("image_4.png", None, r"missing file .*_image_4.png"),
    ],
)
def test_a_malformed_sample_names_its_file(
    generated: tuple[Path, int], tmp_path: Path, item: str, content: str | bytes | None, message: str
) -> None:
    ref = _copy_sample(generated[0], tmp_path)
    path = ref.item(item)
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_sample(ref)


def test_other_malformed_items(generated: tuple[Path, int], tmp_path: Path) -> None:
    ref = _copy_sample(generated[0], tmp_path)
    Image.fromarray(np.zeros((SIZE[1], SIZE[0]), np.uint8)).save(ref.item("depth.png"))  # 8-bit
    with pytest.raises(DataError, match=r"_depth.png is a PNG of mode L, not a depth image"):
        read_sample(ref)
    ref = _copy_sample(generated[0], tmp_path / "pose")
    ref.item("pose.txt").write_text("1 0 0\n0 1 0\n0 0 1\n")
    read_sample(ref)  # the camera frame needs no pose
    with pytest.raises(DataError, match=r"_pose.txt must hold a finite 4 x 4 matrix, got shape \(3, 3\)"):
        read_sample(ref, frame="world")
    ref = _copy_sample(generated[0], tmp_path / "mask")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(ref.item("mask.png"))
    with pytest.raises(DataError, match=r"_mask.png is 10 x 10 but .*_depth.png is 96 x 80"):
        read_sample(ref)
    ref.item("metadata.yaml").write_text("anomalous: 2\n")
    with pytest.raises(
        DataError, match=r"_metadata.yaml: anomalous: Input should be less than or equal to 1"
    ):
        is_anomalous(ref)
    with pytest.raises(InputError, match=r"lighting must be 0\.\.5"):
        read_sample(ref, lighting=6)


def test_missing_folders_are_named(generated: tuple[Path, int], tmp_path: Path) -> None:
    root, _ = generated
    with pytest.raises(DataError, match=r"'Lollipop' not found: .* \(categories found: Confetto\)"):
        list_samples(root, "Lollipop", "train")
    with pytest.raises(DataError, match=r"split 'test_private' not found"):
        list_samples(root, CATEGORY, "test_private")
    with pytest.raises(DataError, match="unknown Eyecandies split 'test'"):
        list_samples(root, CATEGORY, "test")
    with pytest.raises(DataError, match="holds no Eyecandies category"):
        list_categories(tmp_path)
