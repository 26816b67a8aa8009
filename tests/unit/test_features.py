"""Feature extractors against the plain recipes they implement (Open3D FPFH as BTF; timm layers pooled)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import tifffile
import timm
import torch
from PIL import Image

from patchbank.data import list_samples
from patchbank.errors import InputError
from patchbank.extract import load_prepared
from patchbank.features import create_extractor, list_extractors, resolve_options
from patchbank.preprocess import IMAGENET_MEAN, IMAGENET_STD, prepare
from patchbank.weights import WeightsRequest
from tests.conftest import CATEGORY

SMALL_RGB = {"backbone": "resnet18", "layers": [2, 3]}  # 128 + 256 channels: fast on a CPU


def btf_fpfh_patches(xyz_path: Path) -> np.ndarray:
    """The plain recipe, step by step as BTF's get_fpfh_features + FPFHFeatures: (784, 33) float64."""
    pc = torch.tensor(tifffile.imread(xyz_path)).permute(2, 0, 1).unsqueeze(0)
    pc = (
        torch.nn.functional.interpolate(pc, size=(224, 224), mode="nearest")
        .squeeze(0)
        .permute(1, 2, 0)
        .numpy()
    )
    flat = pc.reshape(-1, 3)
    nonzero = np.nonzero(np.all(flat != 0, axis=1))[0]
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(flat[nonzero]))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=0.1, max_nn=30))
    fpfh = o3d.pipelines.registration.compute_fpfh_feature(
        cloud, o3d.geometry.KDTreeSearchParamHybrid(radius=0.25, max_nn=100)
    ).data.T
    full = np.zeros((flat.shape[0], 33), dtype=fpfh.dtype)
    full[nonzero] = fpfh
    fmap = torch.tensor(full.reshape(224, 224, 33)).permute(2, 0, 1).unsqueeze(0)
    pooled = torch.nn.AdaptiveAvgPool2d((28, 28))(torch.nn.AvgPool2d(3, stride=1)(fmap))
    return pooled.reshape(33, -1).T.numpy()


def test_registry_knows_the_three_methods() -> None:
    assert {"fpfh", "rgb", "rgb+fpfh"} <= set(list_extractors())
    with pytest.raises(InputError, match="unknown feature extractor 'sift'"):
        resolve_options("sift")
    with pytest.raises(InputError, match="bad option for feature extractor fpfh: feature_radius"):
        resolve_options("fpfh", {"feature_radius": -1})


def test_fpfh_matches_plain_open3d_recipe(demo_root: Path) -> None:
    """neighbours=kdtree is BTF's recipe; the default grid kernels are held to Open3D in their own tests."""
    refs = list_samples(demo_root, CATEGORY, "test")[:2]  # a good and a defective sample, with dropouts
    extractor = create_extractor("fpfh", {"neighbours": "kdtree"})
    assert extractor.backend == "open3d" and create_extractor("fpfh").backend == "numba"
    prepared = [prepare(Image.open(r.rgb), tifffile.imread(r.xyz)) for r in refs]
    assert (prepared[0].xyz == 0).all(axis=2).any(), "the demo cloud should have missing points"
    feats = extractor.extract(prepared)
    assert feats.shape == (2, 784, 33) and feats.dtype == np.float32
    for got, ref in zip(feats, refs, strict=True):
        np.testing.assert_allclose(got, btf_fpfh_patches(ref.xyz), rtol=1e-5, atol=1e-5)
    assert extractor.spec.options == {
        "normal_radius": 0.1,
        "normal_max_nn": 30,
        "feature_radius": 0.25,
        "feature_max_nn": 100,
        "neighbours": "kdtree",
        "window": 10,
        "background": None,
    }


def test_rgb_layers_pooled_and_concatenated(demo_root: Path) -> None:
    """Random init, explicitly: only the plumbing is under test here, not the weights."""
    ref = list_samples(demo_root, CATEGORY, "train")[0]
    extractor = create_extractor("rgb", SMALL_RGB, WeightsRequest.random(3))
    assert extractor.dim == 128 + 256
    assert extractor.weights.kind == "random" and extractor.weights.seed == 3
    p = prepare(Image.open(ref.rgb), tifffile.imread(ref.xyz))
    feats = extractor.extract([p])
    torch.manual_seed(3)
    model = timm.create_model("resnet18", features_only=True, out_indices=(2, 3)).eval()
    with torch.no_grad():
        x = (p.rgb - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]  # resnet18's own config
        maps = model(torch.from_numpy(x)[None])
    avg, resize = torch.nn.AvgPool2d(3, stride=1), torch.nn.AdaptiveAvgPool2d((28, 28))
    patch = torch.cat([resize(avg(m)) for m in maps], 1)
    np.testing.assert_allclose(feats[0], patch.reshape(patch.shape[1], -1).T.numpy(), rtol=1e-4, atol=1e-5)


def test_rgb_fpfh_is_the_concatenation(demo_root: Path) -> None:
    ref = list_samples(demo_root, CATEGORY, "train")[1]
    p = prepare(Image.open(ref.rgb), tifffile.imread(ref.xyz))
    fused = create_extractor("rgb+fpfh", {"rgb": SMALL_RGB}, WeightsRequest.random(1))
    rgb = create_extractor("rgb", SMALL_RGB, WeightsRequest.random(1))
    both = fused.extract([p])[0]
    assert both.shape == (784, 384 + 33)
    np.testing.assert_allclose(both[:, :384], rgb.extract([p])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both[:, 384:], create_extractor("fpfh").extract([p])[0], rtol=1e-6)
    assert fused.weights == rgb.weights


def test_bf16_backbone_is_recorded_and_close_to_fp32(demo_root: Path) -> None:
    """Random init, explicitly: bf16 autocast changes the arithmetic, not the features' meaning."""
    ref = list_samples(demo_root, CATEGORY, "train")[0]
    p = prepare(Image.open(ref.rgb), tifffile.imread(ref.xyz))
    fp32 = create_extractor("rgb", SMALL_RGB, WeightsRequest.random(2))
    bf16 = create_extractor("rgb", {**SMALL_RGB, "precision": "bf16"}, WeightsRequest.random(2))
    assert bf16.spec.options["precision"] == "bf16" and bf16.spec != fp32.spec
    a, b = fp32.extract([p])[0], bf16.extract([p])[0]
    assert b.dtype == np.float32 and not np.array_equal(a, b)
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    assert np.median(rel) < 0.02


def test_a_spec_describes_long_fitted_values_cut_short() -> None:
    """Fitted weights (cfm's mappings) are long: messages and logs show their start, not megabytes."""
    from patchbank.features.base import DESCRIBE_MAX, FeatureSpec

    spec = FeatureSpec(extractor="cfm", options={"mappings": "A" * 100_000, "hidden": 92}, dim=185)
    text = spec.describe()
    assert "hidden=92" in text and len(text) < DESCRIBE_MAX + 40 and text.count("A") == DESCRIBE_MAX - 1


def test_side_by_side_extraction_equals_calling_each_in_turn(demo_root: Path) -> None:
    """The members (and the part's mask) run in worker threads; the results are exactly the sequential ones."""
    from patchbank.features.base import extract_side_by_side
    from patchbank.rules import PRODUCT
    from patchbank.scorer import part_patches

    refs = list_samples(demo_root, CATEGORY, "test")[:3]
    batch = [load_prepared(r, 224) for r in refs]
    extractors = [create_extractor("rgb", SMALL_RGB, WeightsRequest.random(4)), create_extractor("fpfh")]
    feats, keep = extract_side_by_side(extractors, batch, lambda b: part_patches(b, PRODUCT))
    assert keep is not None and np.array_equal(keep, part_patches(batch, PRODUCT))
    for got, e in zip(feats, extractors, strict=True):  # fpfh, which uses_part, computed the part only
        np.testing.assert_array_equal(got, e.extract(batch, keep) if e.uses_part else e.extract(batch))
    alone, nothing = extract_side_by_side(extractors[1:], batch)
    assert nothing is None and np.array_equal(alone[0], extractors[1].extract(batch))
    # the part found beforehand (as the build reads ahead): the same features, and the same part back
    for members in (extractors, extractors[1:]):
        given, back = extract_side_by_side(members, batch, keep)
        assert back is keep
        for got, want in zip(given, feats[-len(members) :], strict=True):
            np.testing.assert_array_equal(got, want)


def test_reading_ahead_gives_every_batch_in_order_with_its_part(demo_root: Path) -> None:
    """iter_batches reads and finds the part ahead of extraction; batches come back in order, each with
    its own part, as extracting them one by one."""
    from patchbank.extract import LOOK_AHEAD, iter_batches
    from patchbank.features.base import extract_side_by_side
    from patchbank.rules import PRODUCT
    from patchbank.scorer import part_patches

    refs = list_samples(demo_root, CATEGORY, "test")[: 2 * (LOOK_AHEAD + 1) + 1]
    extractors = [create_extractor("fpfh")]
    finder = partial(part_patches, scoring=PRODUCT)
    got = list(iter_batches(extractors, refs, batch_size=2, progress=False, part=finder))
    assert [r for chunk, *_ in got for r in chunk] == list(refs)
    for chunk, prepared, (feats,), found in got:
        want, part = extract_side_by_side(extractors, [load_prepared(r, 224) for r in chunk], finder)
        assert len(prepared) == len(chunk) and np.array_equal(found, part)
        np.testing.assert_array_equal(feats, want[0])


def test_openmp_threads_wait_passively_unless_the_environment_says_otherwise() -> None:
    import os
    import subprocess
    import sys

    code = "import patchbank, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_fpfh_on_the_part_only_equals_the_whole_there(demo_root: Path) -> None:
    """Given the patches on the part, FPFH computes only what they pool: their features equal the whole
    cloud's exactly, the other patches are zeros."""
    from patchbank.rules import PRODUCT
    from patchbank.scorer import part_patches

    batch = [load_prepared(r, 224) for r in list_samples(demo_root, CATEGORY, "test")[:2]]
    keep = part_patches(batch, PRODUCT)
    assert keep is not None and 0.1 < keep.mean() < 0.9
    fpfh = create_extractor("fpfh")
    whole, part = fpfh.extract(batch), fpfh.extract(batch, keep)
    np.testing.assert_array_equal(part[keep], whole[keep])
    assert not part[~keep].any()


@pytest.mark.parametrize("size", [224, 100, 37])
def test_grid_support_is_what_the_pooling_reads(size: int) -> None:
    """grid_support marks exactly the pixels whose values reach the kept cells through to_grid (its
    gradient's support)."""
    from patchbank.features.base import GRID, grid_support, to_grid

    rng = np.random.default_rng(size)
    keep = rng.random(GRID * GRID) < 0.2
    x = torch.zeros(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    cells = to_grid(x).reshape(-1)
    cells[torch.from_numpy(keep)].sum().backward()
    assert x.grad is not None
    np.testing.assert_array_equal(grid_support(keep, size), x.grad[0, 0].numpy() != 0)


def test_a_fitted_concatenation_adapts_raw_features_to_what_it_extracts(demo_root: Path) -> None:
    """rgb+fpfh with per-modality scaling: features extracted before the fit (build-bank's held-out goods)
    adapt to exactly what extract gives once fitted."""
    refs = list_samples(demo_root, CATEGORY, "train")[:3]
    batch = [load_prepared(r, 224) for r in refs]
    options = {"rgb": SMALL_RGB, "normalise": "modality"}
    extractor = create_extractor("rgb+fpfh", options, WeightsRequest.random(5))
    raw = extractor.extract(batch)
    fitted = extractor.fit(raw.copy())
    assert not np.array_equal(fitted, raw)
    np.testing.assert_array_equal(extractor.adapt(raw[1:]), extractor.extract(batch[1:]))
