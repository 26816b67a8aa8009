"""MVTec 3D-AD's ``calibration/camera_parameters.json``: the release's fields read as a pinhole camera, the
demo generator's file checked against its own clouds, depth images read with it, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from patchbank.camera_parameters import CALIBRATION_FILE, CameraParameters
from patchbank.clouds import Intrinsics
from patchbank.data import category_intrinsics, list_samples, read_xyz
from patchbank.errors import DataError
from patchbank_synthetic.demo_data import generate

# The fields and values of the release's tire/calibration/camera_parameters.json (HALCON area_scan_division).
RELEASE = {
    "camera_type": "area_scan_division",
    "focus": 0.0103431,
    "kappa": -2205.03,
    "sx": 3.74983e-06,
    "sy": 3.75e-06,
    "cx": 376.046,
    "cy": 423.07,
    "image_width": 600,
    "image_height": 800,
}
SIZES = {"puck": (48, 48), "bracket": (64, 40)}  # (width, height); bracket not square


@pytest.fixture(scope="module", params=[0, 7], ids=lambda s: f"seed{s}")
def generated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calibrated")
    generate(
        root,
        list(SIZES),
        n_train=1,
        n_validation=0,
        n_test=1,
        size=SIZES["puck"],
        sizes={"bracket": SIZES["bracket"]},
        seed=request.param,
        progress=False,
    )
    return root


def test_the_release_file_is_a_pinhole_camera_in_metres(tmp_path: Path) -> None:
    path = tmp_path / "camera_parameters.json"
    path.write_text(json.dumps({**RELEASE, "a_field_of_a_later_release": 1}))
    cam = CameraParameters.from_file(path).intrinsics()
    # focal length in pixels = focal length / pixel pitch, both in metres on the sensor
    assert cam.fx == pytest.approx(2758.285, abs=1e-3) and cam.fy == pytest.approx(2758.160, abs=1e-3)
    assert (cam.cx, cam.cy, cam.width, cam.height, cam.depth_scale) == (376.046, 423.07, 600, 800, 1.0)


def test_the_generated_camera_reprojects_every_point_onto_its_pixel(generated: Path) -> None:
    for category, (width, height) in SIZES.items():
        raw = json.loads((generated / category / CALIBRATION_FILE).read_text())
        assert raw["image_width"] == width and raw["image_height"] == height and raw["kappa"] == 0.0
        cam = category_intrinsics(generated, category)
        assert cam is not None and (cam.width, cam.height, cam.depth_scale) == (width, height, 1.0)
        clouds = sorted((generated / category).rglob("xyz/*.tiff"))
        assert len(clouds) == 7
        for path in clouds:
            xyz = tifffile.imread(path).astype(np.float64)
            assert xyz.shape == (height, width, 3)
            rows, cols = np.nonzero((xyz != 0).all(axis=2))
            assert rows.size > 0.5 * width * height
            x, y, z = xyz[rows, cols].T
            # the file's own numbers, not the model: u = focus / sx * x / z + cx
            u = raw["focus"] / raw["sx"] * x / z + raw["cx"]
            v = raw["focus"] / raw["sy"] * y / z + raw["cy"]
            assert np.abs(u - cols).max() < 1e-3 and np.abs(v - rows).max() < 1e-3


def test_depth_images_read_with_the_release_layout_camera(generated: Path, tmp_path: Path) -> None:
    category = "bracket"
    ref = list_samples(generated, category, "train")[0]
    xyz = tifffile.imread(ref.xyz)
    folder = tmp_path / category / "train" / "good"
    (folder / "rgb").mkdir(parents=True)
    (folder / "xyz").mkdir()
    (folder / "rgb" / ref.rgb.name).write_bytes(ref.rgb.read_bytes())
    tifffile.imwrite(folder / "xyz" / ref.xyz.name, xyz[..., 2])  # a float depth image, metres
    (tmp_path / category / CALIBRATION_FILE).parent.mkdir()
    (tmp_path / category / CALIBRATION_FILE).write_bytes(
        (generated / category / CALIBRATION_FILE).read_bytes()
    )
    (depth_ref,) = list_samples(tmp_path, category, "train")
    assert depth_ref.intrinsics is not None
    back = read_xyz(depth_ref.xyz, depth_ref.intrinsics)
    assert np.array_equal(back == 0, xyz == 0)
    assert np.abs(back - xyz).max() < 1e-6  # metres


def test_intrinsics_json_comes_first_and_a_bad_calibration_names_its_file(tmp_path: Path) -> None:
    folder = tmp_path / "part"
    (folder / "calibration").mkdir(parents=True)
    assert category_intrinsics(tmp_path, "part") is None
    calibration = folder / CALIBRATION_FILE
    calibration.write_text(json.dumps(RELEASE))
    assert category_intrinsics(tmp_path, "part") == CameraParameters.model_validate(RELEASE).intrinsics()
    own = Intrinsics(fx=100.0, fy=100.0, cx=1.0, cy=2.0, depth_scale=0.001)
    (folder / "intrinsics.json").write_text(own.model_dump_json())
    assert category_intrinsics(tmp_path, "part") == own
    (folder / "intrinsics.json").unlink()
    calibration.write_text(json.dumps({**RELEASE, "focus": -1.0}))
    with pytest.raises(DataError, match=r"camera_parameters\.json: focus"):
        category_intrinsics(tmp_path, "part")
    calibration.write_text(json.dumps({**RELEASE, "camera_type": "area_scan_polynomial"}))
    with pytest.raises(DataError, match="camera_type"):
        category_intrinsics(tmp_path, "part")
    calibration.write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        category_intrinsics(tmp_path, "part")
