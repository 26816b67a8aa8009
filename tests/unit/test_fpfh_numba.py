"""The numba FPFH (pixel-window neighbours) against the Open3D recipe it ports.

The math is checked on Open3D's own KD-tree neighbourhoods (normals with their sign, SPFH, FPFH), the window
search on a demo 224 x 224 cloud (equal to ``fpfh_map`` wherever the window holds Open3D's neighbours) and on
a small noisy cloud whose window spans it all (equal everywhere); then the edge cases and input checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchbank.data import list_samples
from patchbank.extract import load_prepared
from patchbank.features import fpfh_numba
from patchbank.features.fpfh import FPFHOptions, fpfh_map
from patchbank.features.fpfh_numba import grid_fpfh
from patchbank.preprocess import valid_points
from patchbank_synthetic.demo_data import generate

o3d = pytest.importorskip("open3d")

OPTS = FPFHOptions()
EXACT = 1e-9  # relative to a point's largest bin; the port reproduces Open3D to ~3e-15
WINDOW = 8


def _grid(xyz: np.ndarray, opts: FPFHOptions = OPTS, window: int = WINDOW) -> np.ndarray:
    return grid_fpfh(
        xyz, opts.normal_radius, opts.normal_max_nn, opts.feature_radius, opts.feature_max_nn, window
    )


def _rel_diff(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per point (rows): largest absolute difference over the point's largest reference bin."""
    return np.abs(ours - ref).max(axis=1) / np.maximum(np.abs(ref).max(axis=1), 1e-300)


def _hybrid_lists(
    tree: object, points: np.ndarray, radius: float, max_nn: int
) -> tuple[np.ndarray, np.ndarray]:
    """Open3D's hybrid search of every point, padded into (N, max_nn) int32 lists and (N,) counts."""
    nbr = np.zeros((len(points), max_nn), dtype=np.int32)
    count = np.zeros(len(points), dtype=np.int32)
    for i, p in enumerate(points):
        k, idx, _ = tree.search_hybrid_vector_3d(p, radius, max_nn)
        nbr[i, :k], count[i] = np.asarray(idx), k
    return nbr, count


@pytest.fixture(scope="module")
def demo_cloud(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A demo puck sample prepared as the extractor does: (224, 224, 3) float32 with missing points."""
    root = Path(tmp_path_factory.mktemp("fpfh_numba"))
    generate(root, ["puck"], n_train=1, n_validation=0, n_test=1, size=(400, 400), seed=0, progress=False)
    return load_prepared(list_samples(root, "puck", "train")[0], 224).xyz


@pytest.fixture(scope="module")
def demo_open3d(demo_cloud: np.ndarray) -> dict[str, np.ndarray]:
    """Open3D on the demo cloud's valid points: normals, the recipe's FPFH, and both hybrid neighbourhoods."""
    mask = valid_points(demo_cloud)
    points = demo_cloud[mask].astype(np.float64)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    pcd.estimate_normals(
        o3d.geometry.KDTreeSearchParamHybrid(radius=OPTS.normal_radius, max_nn=OPTS.normal_max_nn)
    )
    tree = o3d.geometry.KDTreeFlann(pcd)
    nbr_n, cnt_n = _hybrid_lists(tree, points, OPTS.normal_radius, OPTS.normal_max_nn)
    nbr_f, cnt_f = _hybrid_lists(tree, points, OPTS.feature_radius, OPTS.feature_max_nn)
    return {
        "points": points,
        "normals": np.asarray(pcd.normals),
        "fpfh": fpfh_map(demo_cloud, OPTS)[:, mask].T,
        "nbr_n": nbr_n,
        "cnt_n": cnt_n,
        "nbr_f": nbr_f,
        "cnt_f": cnt_f,
    }


def _all(d: dict[str, np.ndarray]) -> np.ndarray:
    """Every point wanted (see fpfh_numba.needs)."""
    return np.full(len(d["points"]), fpfh_numba.NEED_FPFH, dtype=np.int8)


def test_normals_match_open3d_including_sign(demo_open3d: dict[str, np.ndarray]) -> None:
    d = demo_open3d
    normals = fpfh_numba._normals(d["points"], d["nbr_n"], d["cnt_n"], _all(d))
    np.testing.assert_allclose(normals, d["normals"], rtol=0, atol=1e-12)
    assert (
        np.einsum("ij,ij->i", normals, d["normals"]) > 0
    ).all()  # same sign everywhere, not just same axis


def test_fpfh_math_matches_open3d_on_its_neighbourhoods(demo_open3d: dict[str, np.ndarray]) -> None:
    d = demo_open3d
    normals = fpfh_numba._normals(d["points"], d["nbr_n"], d["cnt_n"], _all(d))
    spfh = fpfh_numba._spfh(d["points"], normals, d["nbr_f"], d["cnt_f"], _all(d))
    n = len(d["points"])
    feats = np.zeros((33, n))
    fpfh_numba._fpfh(d["points"], spfh, d["nbr_f"], d["cnt_f"], np.arange(n), _all(d), feats)
    assert _rel_diff(feats.T, d["fpfh"]).max() < EXACT


def test_grid_fpfh_equals_open3d_where_the_window_holds_its_neighbours(
    demo_cloud: np.ndarray, demo_open3d: dict[str, np.ndarray]
) -> None:
    """A point's FPFH is exact when the window holds its neighbourhood, its neighbours' (SPFH) and those
    neighbours' normal neighbourhoods; on the demo cloud at window 8 that is over 98% of the points."""
    d = demo_open3d
    mask = valid_points(demo_cloud)
    rows, cols = np.nonzero(mask)

    def held(nbr: np.ndarray, count: np.ndarray) -> np.ndarray:
        used = np.arange(nbr.shape[1]) < count[:, None]
        near = (np.abs(rows[nbr] - rows[:, None]) <= WINDOW) & (np.abs(cols[nbr] - cols[:, None]) <= WINDOW)
        return (near | ~used).all(axis=1)

    def all_neighbours(flag: np.ndarray) -> np.ndarray:
        used = np.arange(d["nbr_f"].shape[1]) < d["cnt_f"][:, None]
        return (flag[d["nbr_f"]] | ~used).all(axis=1)

    normal_ok = held(d["nbr_n"], d["cnt_n"])
    spfh_ok = held(d["nbr_f"], d["cnt_f"]) & normal_ok & all_neighbours(normal_ok)
    exact = spfh_ok & all_neighbours(spfh_ok)
    assert exact.mean() > 0.98

    ours = _grid(demo_cloud)
    rel = _rel_diff(ours[:, mask].T, d["fpfh"])
    assert rel[exact].max() < EXACT
    assert (rel < EXACT).mean() >= exact.mean()  # elsewhere the window usually finds the same neighbours too


def _noisy_surface(h: int, w: int, seed: int) -> np.ndarray:
    """A curved organized cloud with jitter (no distance ties) and about 10% of its points missing."""
    rng = np.random.default_rng(seed)
    v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    xyz = np.stack([0.1 * u, 0.1 * v, 0.5 + 0.03 * (u**2 - v**2) + 0.01 * np.sin(3 * u)], axis=-1)
    xyz += rng.normal(scale=1e-3, size=xyz.shape)
    xyz[rng.random((h, w)) < 0.1] = 0
    return xyz


@pytest.mark.parametrize(
    "opts",
    [
        FPFHOptions(normal_radius=0.02, normal_max_nn=30, feature_radius=0.05, feature_max_nn=100),
        FPFHOptions(normal_radius=0.05, normal_max_nn=10, feature_radius=0.03, feature_max_nn=20),
    ],
)
def test_window_spanning_the_cloud_equals_open3d_everywhere(opts: FPFHOptions) -> None:
    """Radius- and count-limited neighbourhoods, normal search wider than the feature search too."""
    xyz = _noisy_surface(30, 26, seed=1)
    mask = valid_points(xyz)
    ours, ref = _grid(xyz, opts, window=30)[:, mask].T, fpfh_map(xyz, opts)[:, mask].T
    assert _rel_diff(ours, ref).max() < EXACT


def test_missing_points_stay_zero(demo_cloud: np.ndarray) -> None:
    mask = valid_points(demo_cloud)
    assert (~mask).any()
    out = _grid(demo_cloud)
    assert out.shape == (33, 224, 224) and out.dtype == np.float64
    assert not out[:, ~mask].any()
    assert out[:, mask].any(axis=0).all()


def test_float32_and_float64_clouds_agree(demo_cloud: np.ndarray) -> None:
    np.testing.assert_array_equal(_grid(demo_cloud), _grid(demo_cloud.astype(np.float64)))


def test_all_missing_cloud_gives_zeros() -> None:
    out = _grid(np.zeros((12, 10, 3), dtype=np.float32))
    assert out.shape == (33, 12, 10) and not out.any()


@pytest.mark.parametrize("n_valid", [1, 2])
def test_one_or_two_valid_points_match_open3d(n_valid: int) -> None:
    xyz = np.zeros((6, 7, 3))
    xyz[1, 2] = (0.01, 0.02, 0.5)
    if n_valid == 2:
        xyz[3, 4] = (0.03, -0.01, 0.52)
    np.testing.assert_allclose(_grid(xyz), fpfh_map(xyz, OPTS), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 4), (3,), (2, 8, 8, 3)])
def test_rejects_clouds_that_are_not_h_w_3(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="organized cloud"):
        _grid(np.ones(shape))


@pytest.mark.parametrize(
    "args",
    [(0.0, 30, 0.25, 100, 8), (0.1, 30, -1.0, 100, 8), (0.1, 0, 0.25, 100, 8), (0.1, 30, 0.25, 100, 0)],
)
def test_rejects_bad_search_parameters(args: tuple[float, int, float, int, int]) -> None:
    with pytest.raises(ValueError):
        grid_fpfh(np.ones((8, 8, 3)), *args)


def test_wanted_pixels_equal_the_full_computation_and_the_rest_is_zero(demo_cloud: np.ndarray) -> None:
    """A bank that scores the part only asks for the part's pixels: theirs are exactly the full
    computation's (every neighbour, normal and SPFH they depend on is computed), the others are zeros."""
    wanted = np.zeros(demo_cloud.shape[:2], dtype=bool)
    wanted[60:130, 40:110] = True  # a block inside the cloud, another at its edge
    wanted[200:, 150:] = True
    full, part = _grid(demo_cloud), _wanted(demo_cloud, wanted)
    mask = valid_points(demo_cloud)
    np.testing.assert_array_equal(part[:, wanted], full[:, wanted])
    assert not part[:, ~wanted].any() and part[:, wanted & mask].any(axis=0).all()


def test_no_wanted_pixel_gives_zeros_and_a_wrong_shape_is_refused(demo_cloud: np.ndarray) -> None:
    assert not _wanted(demo_cloud, np.zeros(demo_cloud.shape[:2], dtype=bool)).any()
    with pytest.raises(ValueError, match="wanted pixels"):
        _wanted(demo_cloud, np.ones((10, 10), dtype=bool))


def _wanted(xyz: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    o = OPTS
    args = (o.normal_radius, o.normal_max_nn, o.feature_radius, o.feature_max_nn, WINDOW)
    return grid_fpfh(xyz, *args, wanted=wanted)


@pytest.mark.parametrize("part", [False, True])
def test_pooled_fpfh_equals_the_map_pooled_by_to_grid(demo_cloud: np.ndarray, part: bool) -> None:
    """The extractor pools FPFH without making the (33, 224, 224) map: the same grid as to_grid of the map
    (BTF's 3 x 3 then adaptive average pooling), to rounding; also on a cloud that is not square."""
    import torch

    from patchbank.features.base import pool_matrix, to_grid

    o = OPTS
    args = (o.normal_radius, o.normal_max_nn, o.feature_radius, o.feature_max_nn, WINDOW)
    for xyz in (demo_cloud, demo_cloud[:, 20:200]):
        wanted = None
        if part:
            wanted = np.zeros(xyz.shape[:2], dtype=bool)
            wanted[60:130, 40:110] = True
        want = to_grid(torch.from_numpy(grid_fpfh(xyz, *args, wanted=wanted)[None])).numpy()[0]
        rows, cols = pool_matrix(xyz.shape[0]), pool_matrix(xyz.shape[1])
        got = fpfh_numba.pooled_fpfh(xyz, *args, rows, cols, wanted=wanted)
        assert got.shape == want.shape == (33, 28, 28)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
        assert (got != 0).any()


def test_pooled_fpfh_refuses_pooling_that_does_not_fit(demo_cloud: np.ndarray) -> None:
    from patchbank.features.base import pool_matrix

    o = OPTS
    args = (o.normal_radius, o.normal_max_nn, o.feature_radius, o.feature_max_nn, WINDOW)
    with pytest.raises(ValueError, match="pooling matrices"):
        fpfh_numba.pooled_fpfh(demo_cloud, *args, pool_matrix(100), pool_matrix(224))
