"""Converting a dataset's clouds: the camera fitted from the clouds, the depth step of a 16-bit PNG, and the
refusal to write depth images of clouds no pinhole camera saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from patchbank.clouds import Intrinsics
from patchbank.convert import convert_dataset, fit_intrinsics, png_depth_scale
from patchbank.data import list_samples, read_xyz
from patchbank.errors import InputError

CAMERA = Intrinsics(fx=40.0, fy=41.0, cx=7.5, cy=5.25, depth_scale=1.0)


def seen_by(cam: Intrinsics, depth: float, height: int = 12, width: int = 16) -> np.ndarray:
    """(H, W, 3) float32: a bumpy surface about ``depth`` metres away, seen through ``cam``."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    z = depth + 0.01 * np.sin(u / 3) * np.cos(v / 2)
    return np.stack([(u - cam.cx) / cam.fx * z, (v - cam.cy) / cam.fy * z, z], axis=-1).astype(np.float32)


def dataset(root: Path, clouds: list[np.ndarray]) -> Path:
    kind = root / "part" / "test" / "good"
    for sub in ("rgb", "xyz"):
        (kind / sub).mkdir(parents=True)
    for i, xyz in enumerate(clouds):
        Image.fromarray(np.zeros((*xyz.shape[:2], 3), np.uint8)).save(kind / "rgb" / f"{i:03d}.png")
        tifffile.imwrite(kind / "xyz" / f"{i:03d}.tiff", xyz, photometric="rgb")
    return root


def test_the_fitted_camera_is_the_one_that_saw_the_clouds() -> None:
    cam, rms = fit_intrinsics([seen_by(CAMERA, 0.5), seen_by(CAMERA, 0.7)], depth_scale=1e-4)
    for key in ("fx", "fy", "cx", "cy"):
        assert getattr(cam, key) == pytest.approx(getattr(CAMERA, key), rel=1e-6)
    assert rms < 1e-3 and cam.depth_scale == 1e-4


def test_the_finest_png_step_that_holds_the_farthest_point() -> None:
    assert png_depth_scale(0.06) == 1e-6 and png_depth_scale(0.5) == 1e-5 and png_depth_scale(6.0) == 1e-4
    assert png_depth_scale(60.0) == 1e-3
    with pytest.raises(InputError, match="does not fit a 16-bit PNG"):
        png_depth_scale(70.0)


def test_depth_of_clouds_no_pinhole_camera_saw_is_refused(tmp_path: Path) -> None:
    scrambled = seen_by(CAMERA, 0.5)
    scrambled[..., 0] = scrambled[..., 0][:, ::-1]  # x mirrored: not a projection any more
    root = dataset(tmp_path / "src", [scrambled, seen_by(CAMERA, 0.6)])
    with pytest.raises(
        InputError, match=r"part: the clouds do not follow a pinhole camera .*write ply, pcd or npy"
    ):
        convert_dataset(root, tmp_path / "out", "depth-tiff", progress=False)
    jittered = seen_by(CAMERA, 0.5)
    jittered[..., 0] += (
        np.random.default_rng(0).normal(0, 0.5, jittered.shape[:2]) * 0.5 / CAMERA.fx
    )  # 0.5 px
    other = dataset(tmp_path / "jittered", [jittered])
    with pytest.raises(InputError, match=r"reprojection RMS 0\.[3-7]\d* px"):
        convert_dataset(other, tmp_path / "out", "depth-png", progress=False)
    done = convert_dataset(root, tmp_path / "ply", "ply", progress=False)  # but any xyz format is fine
    assert done[0].clouds == 2 and done[0].max_error_m == 0 and done[0].changed_points == 0


def test_given_intrinsics_and_depth_scale_are_used(tmp_path: Path) -> None:
    root = dataset(tmp_path / "src", [seen_by(CAMERA, 0.5)])
    (done,) = convert_dataset(
        root, tmp_path / "out", "depth-png", intrinsics=CAMERA, depth_scale=1e-4, progress=False
    )
    assert not done.fitted and done.intrinsics == CAMERA.model_copy(update={"depth_scale": 1e-4})
    assert done.max_error_m <= 0.5e-4 + 1e-7
    (ref,) = list_samples(tmp_path / "out", "part", "test")
    assert ref.xyz.name == "000.png" and ref.intrinsics == done.intrinsics
    np.testing.assert_allclose(read_xyz(ref.xyz, ref.intrinsics), seen_by(CAMERA, 0.5), atol=0.5e-4 + 1e-7)
    with pytest.raises(InputError, match="folder of its own"):
        convert_dataset(root, root, "ply", progress=False)
