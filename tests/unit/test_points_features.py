"""point-fpfh: rotation and translation invariance against the unrotated cloud, scale adaptivity, bounded
work, and a spec that rebuilds exactly its extractor."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from patchbank.errors import InputError
from patchbank.features.base import FeatureSpec
from patchbank.methods import parse_method
from patchbank.points.features import (
    POINT_EXTRACTORS,
    PointFPFHExtractor,
    PointFPFHOptions,
    create_point_extractor,
    oriented_normals,
    principal_frame,
    voxel_means,
)
from patchbank_synthetic.real3d import SHAPES, make_cloud

ROTATION = Rotation.from_euler("xyz", [37.0, -71.0, 123.0], degrees=True).as_matrix()
SHIFT = np.array([12.0, -30.0, 7.5])


@pytest.fixture(scope="module")
def extractor() -> PointFPFHExtractor:
    return PointFPFHExtractor(PointFPFHOptions(n_centres=512))


@pytest.fixture(scope="module", params=["superellipsoid", "capsule"])
def cloud(request: pytest.FixtureRequest) -> np.ndarray:
    return make_cloud(SHAPES[request.param], "good", "test", 0, 8000, 3, "aligned")[0].astype(np.float64)


def test_features_after_downsampling_are_exactly_rotation_invariant(extractor: PointFPFHExtractor) -> None:
    """Normals oriented away from the centroid make FPFH, the centres' sampling and their grouping turn with
    the cloud: the same downsampled points, rotated, give the same centres, rotated, and the same features
    (float rounding aside)."""
    cloud = make_cloud(SHAPES["superellipsoid"], "good", "test", 0, 8000, 3, "aligned")[0]
    down = extractor.downsample(cloud)
    centres, features = extractor.describe(down.points, down.voxel)
    turned_centres, turned = extractor.describe(down.points @ ROTATION.T, down.voxel)
    np.testing.assert_allclose(turned_centres, centres @ ROTATION.T, atol=1e-9)
    scale = np.abs(features).max()
    assert np.isclose(turned, features, atol=1e-3 * scale).mean() > 0.99  # a point at a radius's edge may
    assert (
        np.abs(turned - features).max() < 0.01 * scale
    )  # fall in or out: its neighbours' bins move a little


def test_a_rotated_and_shifted_cloud_gets_the_features_of_the_unrotated_one(
    extractor: PointFPFHExtractor, cloud: np.ndarray
) -> None:
    """End to end: each centre of the moved cloud, moved back, sits on a centre of the original whose
    feature it shares, far closer than the features of two different places on the part."""
    plain = extractor.extract(cloud)
    moved = extractor.extract(cloud @ ROTATION.T + SHIFT)
    back = (moved.centres - SHIFT) @ ROTATION
    distance, nearest = cKDTree(plain.centres).query(back)
    assert np.median(distance) < 0.1 * plain.voxel
    difference = np.linalg.norm(moved.features - plain.features[nearest], axis=1)
    shuffled = np.random.default_rng(0).permutation(len(plain.features))
    unrelated = np.linalg.norm(plain.features[shuffled] - plain.features, axis=1)
    assert np.median(difference) < 0.05 * np.median(unrelated)
    assert np.percentile(difference, 95) < 0.25 * np.median(unrelated)


def test_without_the_orientation_rule_rotation_changes_the_features(extractor: PointFPFHExtractor) -> None:
    """The rule does the work: normals flipped at random (Open3D's arbitrary signs) change FPFH."""
    import open3d as o3d

    down = extractor.downsample(make_cloud(SHAPES["capsule"], "good", "test", 0, 4000, 3, "aligned")[0])
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(down.points))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(2 * down.voxel, 30))
    normals = oriented_normals(down.points, np.asarray(pcd.normals))
    assert ((down.points * normals).sum(axis=1) >= 0).all()  # every normal points away from the centroid
    param = o3d.geometry.KDTreeSearchParamHybrid(5 * down.voxel, 100)
    fpfh = []
    for flip in (np.ones(len(normals)), np.random.default_rng(1).choice([-1.0, 1.0], len(normals))):
        pcd.normals = o3d.utility.Vector3dVector(normals * flip[:, None])
        fpfh.append(np.asarray(o3d.pipelines.registration.compute_fpfh_feature(pcd, param).data))
    assert np.abs(fpfh[0] - fpfh[1]).mean() > 1.0


def test_millimetres_and_metres_give_the_same_features(
    extractor: PointFPFHExtractor, cloud: np.ndarray
) -> None:
    mm = extractor.extract(cloud)
    metres = extractor.extract(cloud / 1000)
    assert metres.voxel == pytest.approx(mm.voxel / 1000) and metres.n_points == mm.n_points
    np.testing.assert_allclose(metres.centres * 1000, mm.centres, atol=1e-3)
    np.testing.assert_allclose(metres.features, mm.features, atol=1e-2 * np.abs(mm.features).max())


def test_work_is_bounded_whatever_the_cloud(cloud: np.ndarray) -> None:
    small = PointFPFHExtractor(PointFPFHOptions(voxel_fraction=0.01, max_points=1500, n_centres=64))
    f = small.extract(cloud)
    assert f.n_points == 1500 and f.centres.shape == (64, 3) and f.features.shape == (64, 33)
    assert f.neighbours.shape == (64, 16) and (f.neighbours[:, 0] == np.arange(64)).all()


def test_voxel_means_and_the_principal_frame() -> None:
    points = np.array([[0.1, 0.0, 0.0], [0.3, 0.0, 0.0], [1.2, 0.0, 0.0], [-0.6, 0.0, 0.0]])
    np.testing.assert_allclose(voxel_means(points, 1.0)[:, 0], [-0.6, 0.2, 1.2])  # cells centred on 0
    rng = np.random.default_rng(0)
    points = rng.normal(size=(2000, 3)) * [5.0, 2.0, 1.0] @ ROTATION.T + SHIFT
    origin, axes = principal_frame(points)
    np.testing.assert_allclose(origin, points.mean(axis=0))
    np.testing.assert_allclose(np.abs(axes.T @ ROTATION), np.eye(3), atol=0.05)


def test_the_spec_rebuilds_exactly_the_extractor() -> None:
    e = create_point_extractor("point-fpfh", {"n_centres": 256, "voxel_fraction": 0.04})
    assert isinstance(e.spec, FeatureSpec) and e.spec.extractor == "point-fpfh" and e.spec.dim == 33
    assert e.spec.options["n_centres"] == 256 and e.spec.options["feature_radius"] == 5.0
    assert create_point_extractor(e.spec.extractor, e.spec.options).spec == e.spec
    assert e.max_centres == 256 and "point-fpfh" in POINT_EXTRACTORS
    with pytest.raises(InputError, match="n_centres"):
        create_point_extractor("point-fpfh", {"n_centres": 0})
    with pytest.raises(InputError, match="unknown point feature extractor"):
        create_point_extractor("point-nope")


def test_point_fpfh_is_a_point_method() -> None:
    method = parse_method(" point-fpfh ")
    assert method.input == "points" and method.members == ("point-fpfh",) and not method.needs_weights
    assert parse_method("rgb/fpfh").input == "image"
    for bad in ("point-fpfh/fpfh", "point-fpfh@svm"):
        with pytest.raises(InputError, match="scores point clouds alone"):
            parse_method(bad)
