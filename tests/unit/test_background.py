"""Background removal (RANSAC plane + largest DBSCAN cluster) on synthetic scenes and on demo data, and as
the FPFH extractor's ``background`` option. Real numpy and Open3D throughout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from patchbank.background import BackgroundOptions, fit_plane, point_spacing, remove_background
from patchbank.data import list_samples
from patchbank.errors import InputError
from patchbank.extract import load_prepared
from patchbank.features import FeatureSpec, create_extractor
from patchbank.preprocess import Prepared, valid_points

SIZE = 224
NOISE = (slice(30, 36), slice(180, 186))  # a floating 6 x 6 pixel cluster, 0.2 m above the table
SCRIPT = """
import sys, numpy as np
from patchbank.background import BackgroundOptions, remove_background
xyz = np.load(sys.argv[1])
np.save(sys.argv[2], remove_background(xyz, BackgroundOptions()))
"""


def _rays(size: int = SIZE) -> np.ndarray:
    """(size, size, 3) pinhole rays with z = 1: 0.25 m of a plane 0.5 m away spans the image."""
    f, c = size * 0.5 / 0.25, (size - 1) / 2
    i, j = np.mgrid[0:size, 0:size].astype(np.float64)
    return np.stack([(j - c) / f, (i - c) / f, np.ones_like(i)], axis=-1)


def table_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A camera 0.5 m above a table tilted by (3, -2) degrees, a dome (radius 50 mm, height 30 mm) at the
    centre, a floating noise patch, 0.2 mm depth noise. Returns (xyz float32, dome footprint mask)."""
    rays = _rays()
    normal = np.array([np.sin(np.deg2rad(-2.0)), np.sin(np.deg2rad(3.0)), 1.0])
    normal /= np.linalg.norm(normal)
    pts = rays * (0.5 / (rays @ normal))[..., None]
    offset = pts - pts[SIZE // 2, SIZE // 2]
    in_plane = offset - (offset @ normal)[..., None] * normal
    height = np.clip(0.03 * (1 - (np.linalg.norm(in_plane, axis=-1) / 0.05) ** 2), 0, None)
    pts -= height[..., None] * normal
    pts[..., 2] += np.random.default_rng(seed).normal(0, 2e-4, pts.shape[:2])
    pts[NOISE] *= 0.6
    return pts.astype(np.float32), height > 0


def bowl_scene() -> np.ndarray:
    """A curved part filling the whole view (no background plane): z = 0.4 + 4 (x^2 + y^2)."""
    rays = _rays()
    r2 = rays[..., 0] ** 2 + rays[..., 1] ** 2
    # z = 0.4 + 4 r2 z^2 on the ray (x, y) = z (rx, ry): the smaller root of 4 r2 z^2 - z + 0.4 = 0
    z = np.where(r2 > 0, (1 - np.sqrt(np.clip(1 - 6.4 * r2, 0, None))) / (8 * np.maximum(r2, 1e-12)), 0.4)
    return (rays * z[..., None]).astype(np.float32)


def _prepared(xyz: np.ndarray) -> Prepared:
    return Prepared(rgb=np.zeros((3, SIZE, SIZE), np.float32), xyz=xyz, input_size=(SIZE, SIZE))


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    return table_scene()


def test_table_removed_object_kept_noise_dropped(scene: tuple[np.ndarray, np.ndarray]) -> None:
    xyz, dome = scene
    before = xyz.copy()
    out = remove_background(xyz, BackgroundOptions())
    kept = valid_points(out)
    np.testing.assert_array_equal(xyz, before)  # input untouched
    assert out.dtype == np.float32 and out.shape == xyz.shape
    assert not kept[~dome].any()  # table and floating noise gone
    # the dome loses only its rim within 5 mm of the table: r > 0.913 R, about 17% of its footprint
    assert (kept & dome).sum() / dome.sum() > 0.8
    np.testing.assert_array_equal(out[kept], xyz[kept])  # kept points unchanged
    assert not out[~kept].any()  # the rest is exactly (0, 0, 0)


def test_fit_plane_recovers_tilted_table(scene: tuple[np.ndarray, np.ndarray]) -> None:
    xyz, _ = scene
    border = np.ones((SIZE, SIZE), bool)
    border[10:-10, 10:-10] = False
    fit = fit_plane(xyz[border].astype(np.float64), 0.005, 1000)
    assert fit is not None
    plane, fraction = fit
    expected = np.array([np.sin(np.deg2rad(-2.0)), np.sin(np.deg2rad(3.0)), 1.0])
    expected /= np.linalg.norm(expected)
    assert abs(abs(plane[:3] @ expected) - 1) < 1e-5
    assert abs(abs(plane[3]) - 0.5) < 1e-3
    assert fraction == 1.0


def test_cloud_without_plane_keeps_its_object() -> None:
    """No plane holds half the border (the best holds about 31%), so only DBSCAN runs: it drops just the
    image's extreme corner pixels, where the steep bowl leaves fewer than 10 points within eps."""
    xyz = bowl_scene()
    out = remove_background(xyz, BackgroundOptions())
    kept = valid_points(out)
    assert kept.sum() / valid_points(xyz).sum() > 0.995
    np.testing.assert_array_equal(out[kept], xyz[kept])


def test_plane_fraction_threshold_decides_what_is_a_plane() -> None:
    """The best plane through the bowl's border holds some border points: removed only with a low threshold."""
    xyz = bowl_scene()
    out = remove_background(xyz, BackgroundOptions(min_plane_fraction=0.05))
    assert 0 < valid_points(out).sum() < valid_points(xyz).sum()


def test_all_zero_cloud() -> None:
    xyz = np.zeros((SIZE, SIZE, 3), np.float32)
    out = remove_background(xyz, BackgroundOptions())
    assert out.shape == xyz.shape and not out.any()


def test_cloud_without_border_points_is_still_clustered(scene: tuple[np.ndarray, np.ndarray]) -> None:
    """No plane can be fitted (border all missing), so table + dome stay; the noise cluster still goes."""
    xyz = scene[0].copy()
    frame = np.ones((SIZE, SIZE), bool)
    frame[10:-10, 10:-10] = False
    xyz[frame] = 0
    out = remove_background(xyz, BackgroundOptions())
    expected = xyz.copy()
    expected[NOISE] = 0
    np.testing.assert_array_equal(out, expected)


def test_few_points_and_partly_zero_points() -> None:
    """Two valid points: no plane, no cluster of 10 -> nothing kept; (0, y, z) points come back as zeros."""
    xyz = np.zeros((SIZE, SIZE, 3), np.float32)
    xyz[100, 100] = (0.01, 0.01, 0.5)
    xyz[100, 101] = (0.011, 0.01, 0.5)
    xyz[5, 5] = (0.0, 0.02, 0.5)  # invalid: one coordinate is zero
    out = remove_background(xyz, BackgroundOptions())
    assert not out.any()
    kept = remove_background(xyz, BackgroundOptions(cluster_min_points=2))
    assert valid_points(kept).sum() == 2 and not kept[5, 5].any()


def test_point_spacing_ignores_duplicates() -> None:
    xyz = np.zeros((4, 4, 3), np.float32)
    xyz[1, :] = [(0.001, 0.001, 0.5), (0.001, 0.001, 0.5), (0.003, 0.001, 0.5), (0.005, 0.001, 0.5)]
    assert point_spacing(xyz, valid_points(xyz)) == pytest.approx(0.002, rel=1e-5)
    assert point_spacing(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), bool)) is None


def test_bad_input_shape() -> None:
    with pytest.raises(InputError, match="H, W, 3"):
        remove_background(np.zeros((SIZE, SIZE), np.float32), BackgroundOptions())


def test_deterministic_across_calls_and_processes(
    scene: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    xyz, _ = scene
    first = remove_background(xyz, BackgroundOptions())
    np.testing.assert_array_equal(first, remove_background(xyz, BackgroundOptions()))
    src, dst = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(src, xyz)
    subprocess.run([sys.executable, "-c", SCRIPT, str(src), str(dst)], check=True)
    assert np.load(dst).tobytes() == first.tobytes()


@pytest.mark.parametrize(
    "bad",
    [
        {"plane_distance": -0.001},
        {"plane_distance": 0},
        {"border": 0},
        {"ransac_iterations": 0},
        {"cluster_eps": -1.0},
        {"cluster_min_points": 0},
        {"min_plane_fraction": 1.5},
        {"unknown": 1},
    ],
)
def test_bad_options_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        BackgroundOptions(**bad)
    with pytest.raises(InputError, match="background"):
        create_extractor("fpfh", {"background": bad})


def test_options_are_frozen() -> None:
    with pytest.raises(ValidationError):
        BackgroundOptions().border = 3  # type: ignore[misc]


def test_fpfh_option_changes_features_and_round_trips(scene: tuple[np.ndarray, np.ndarray]) -> None:
    xyz, dome = scene
    batch = [_prepared(xyz)]
    plain = create_extractor("fpfh")
    assert plain.spec.options["background"] is None
    extractor = create_extractor("fpfh", {"background": {"plane_distance": 0.004}})
    assert extractor.spec.options["background"] == BackgroundOptions(plane_distance=0.004).model_dump()
    with_bg, without = extractor.extract(batch), plain.extract(batch)
    assert with_bg.shape == without.shape == (1, 784, 33)
    # patches far from the dome see no points any more: zero features there, not without the option
    corner = 2 * 28 + 2  # patch (2, 2): table only
    assert not dome[:40, :40].any()
    assert not with_bg[0, corner].any() and without[0, corner].any()
    centre = 14 * 28 + 14  # the dome's top: points on both sides
    assert with_bg[0, centre].any() and without[0, centre].any()
    # the spec as the bank manifest stores it (JSON) rebuilds the same extractor
    spec = FeatureSpec.model_validate_json(extractor.spec.model_dump_json())
    assert spec == extractor.spec
    rebuilt = create_extractor(spec.extractor, json.loads(json.dumps(spec.options)))
    assert rebuilt.spec == extractor.spec
    np.testing.assert_array_equal(rebuilt.extract(batch), with_bg)


def test_fpfh_backends_share_the_removal(scene: tuple[np.ndarray, np.ndarray]) -> None:
    """Every backend runs on the same cleaned clouds (the removal happens before the backend is chosen)."""
    xyz, _ = scene
    ext = create_extractor("fpfh", {"background": {}, "neighbours": "kdtree"})
    (cloud,) = ext.clouds([_prepared(xyz)])
    np.testing.assert_array_equal(cloud, remove_background(xyz, BackgroundOptions()))


def test_demo_sample_keeps_the_part(demo_root: Path) -> None:
    """The demo part stands on a table plane: the table goes, a compact blob in the middle stays."""
    ref = list_samples(demo_root, "puck", "train")[0]
    xyz = load_prepared(ref, SIZE).xyz
    out = remove_background(xyz, BackgroundOptions())
    before, after = valid_points(xyz), valid_points(out)
    fraction = after.sum() / before.sum()
    print(f"demo {ref.xyz.name}: kept {after.sum()} of {before.sum()} valid points ({fraction:.1%})")
    assert 0.03 < fraction < 0.5
    rows, cols = np.nonzero(after)
    assert abs(rows.mean() - SIZE / 2) < SIZE / 6 and abs(cols.mean() - SIZE / 2) < SIZE / 6
    assert not after[:10].any() and not after[-10:].any()  # nothing of the table frame survives


def test_inlier_counts_equal_numpys_elementwise_float32() -> None:
    """The kernel counts exactly what numpy's elementwise float32 recipe counts, points on the boundary
    included, so a bank's part masks do not depend on which of the two ran."""
    from patchbank.background import _inlier_counts

    rng = np.random.default_rng(3)
    points = rng.normal(size=(2000, 3)) * 0.05 + (0, 0, 0.5)
    normals = rng.normal(size=(300, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    offsets = -(normals * points[rng.integers(0, 2000, 300)]).sum(axis=1)
    p, n = points.astype(np.float32), normals.astype(np.float32)
    dist = p[:, 0, None] * n[None, :, 0]
    dist += p[:, 1, None] * n[None, :, 1]
    dist += p[:, 2, None] * n[None, :, 2]
    dist += offsets.astype(np.float32)[None, :]
    for distance in (0.005, 0.02):
        expected = np.count_nonzero(np.abs(dist) < distance, axis=0)
        np.testing.assert_array_equal(_inlier_counts(points, normals, offsets, distance), expected)
