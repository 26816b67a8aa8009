"""MVTec 3D-AD's camera file, ``<category>/calibration/camera_parameters.json``, as :class:`Intrinsics`.

The release ships one per category folder. Its fields are those of HALCON's ``area_scan_division`` camera
model, as in the release's ``tire`` category (a public copy: repository
yagamieren09/Automated-Defect-Detection-System-using-AI-vision, path
``dataset/mvtec_3d/tire/calibration/camera_parameters.json``)::

    {"camera_type": "area_scan_division", "focus": 0.0103431, "kappa": -2205.03, "sx": 3.74983e-06,
     "sy": 3.75e-06, "cx": 376.046, "cy": 423.07, "image_width": 600, "image_height": 800}

``focus`` is the focal length and ``sx``, ``sy`` the size of a pixel on the sensor, all in metres; ``cx``,
``cy`` the principal point in pixels (HALCON's image coordinates: 0 is the centre of the first pixel, as in
:class:`Intrinsics`); ``kappa`` (1/m^2) the division model's radial distortion. Only that one category's
file was seen; the other nine are taken to have the same fields (the same sensor and release).

As a pinhole camera: fx = focus / sx, fy = focus / sy, (cx, cy) as given, and depth_scale 1 (the release's
clouds are in metres). :class:`Intrinsics` is a pinhole model, so ``kappa`` is dropped: a pixel's ray
then misses the distorted one by |kappa| r^2 of its distance r from the principal point on the sensor
(for ``tire``, about 1 % at the far corner, 6 pixels). The release's clouds are xyz TIFFs, which need no
camera; the intrinsics serve a line that sends depth images (they are stored in the bank's manifest), and
the generated demo data (``kappa`` 0) is exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchbank.clouds import Intrinsics
from patchbank.errors import DataError

CALIBRATION_FILE = Path("calibration") / "camera_parameters.json"  # relative to a category's folder


class CameraParameters(BaseModel):
    """The fields of MVTec 3D-AD's ``camera_parameters.json`` (HALCON ``area_scan_division``). Fields the
    file may hold beyond these are ignored: the file is the release's, not ours."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    camera_type: Literal["area_scan_division"] = Field(
        "area_scan_division", description="HALCON's camera model: pinhole plus division-model distortion"
    )
    focus: float = Field(gt=0, description="focal length, metres")
    kappa: float = Field(0.0, description="radial distortion of the division model, 1/m^2 (0: none)")
    sx: float = Field(gt=0, description="width of a pixel on the sensor, metres")
    sy: float = Field(gt=0, description="height of a pixel on the sensor, metres")
    cx: float = Field(description="principal point's column, pixels (0 = the first column's centre)")
    cy: float = Field(description="principal point's row, pixels (0 = the first row's centre)")
    image_width: int = Field(ge=1, description="image width, pixels")
    image_height: int = Field(ge=1, description="image height, pixels")

    @classmethod
    def from_file(cls, path: Path) -> CameraParameters:
        """Read the JSON file; DataError naming it and the first wrong field."""
        try:
            data = json.loads(Path(path).read_bytes())
        except OSError as exc:
            raise DataError(f"cannot read camera parameters {path}: {exc.strerror}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"camera parameters {path} are not valid JSON: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise DataError(f"camera parameters {path}: {key + ': ' if key else ''}{first['msg']}") from exc

    def intrinsics(self) -> Intrinsics:
        """The pinhole camera (``kappa`` dropped, see the module's docstring), depth in metres; DataError
        when the focal length in pixels is not a finite number."""
        try:
            return Intrinsics(
                fx=self.focus / self.sx,
                fy=self.focus / self.sy,
                cx=self.cx,
                cy=self.cy,
                depth_scale=1.0,
                width=self.image_width,
                height=self.image_height,
            )
        except ValidationError as exc:
            raise DataError(
                f"camera parameters {self}: no pinhole camera ({exc.errors()[0]['msg']})"
            ) from exc
