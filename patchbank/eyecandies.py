"""Reading the Eyecandies dataset as released (Bonfiglioli et al., ACCV 2022; github eyecan-ai/eyecandies).

The layout (eyecan-ai/eyecandies ``docs/download.md``, "FORMAT"; one pipelime underfolder per split)::

    ROOT/<Category>/<split>/data/<NNN>_<item>.<ext>

``Category`` is one of :data:`CATEGORIES` (``CandyCane``...), ``split`` one of :data:`SPLITS`: ``train``
(1000 good), ``val`` (100 good), ``test_public`` (25 good + 25 bad, annotated) and ``test_private``
(200 + 200, public items only). ``NNN`` is the sample's index, zero-padded to the split's width (M3DM and CFM
read ``str(i).zfill(3)`` in train and ``zfill(2)`` in test_public); any padding is accepted here. The items:

- ``image_0`` ... ``image_5``: 8-bit RGB PNGs under six lightings: all spotlights, bottom, right, top, left
  spotlight, global lighting (:data:`LIGHTINGS`);
- ``depth``: a 16-bit grey PNG normalised to 0..65535, and ``info_depth.yaml`` its bounds in metres
  (``normalization: {min, max}``; :class:`DepthInfo`): d = raw / 65535 * (max - min) + min
  (``docs/download.md`` and ``eyecandies/stages/depth.py``, ``DepthToMetersStage``);
- ``normals``: an 8-bit RGB PNG, (n + 1) * 127.5 per axis, with Y and Z flipped with respect to the camera
  frame (``docs/download.md``, "Normals Map recovery"); not read here;
- ``pose``: the camera's 4 x 4 pose relative to the world, as text (``np.loadtxt``);
- ``obj_params.yaml``, ``metadata.yaml`` (``anomalous: 0 | 1``, :class:`SampleMetadata`), and the 8-bit
  masks ``bumps_mask``, ``dents_mask``, ``colors_mask``, ``normals_mask`` and ``mask`` (their union).

The point cloud follows the official ``DepthToPCStage`` (``eyecandies/stages/depth.py``), which M3DM
(nomewang/M3DM ``utils/preprocess_eyecandies.py``) and CFM (CVLAB-Unibo/crossmodal-feature-mapping
``processing/preprocess_eyecandies.py``) copy: one pinhole camera for every image, focal length
:data:`FOCAL_LENGTH` = 711.11 px at 512 px (Blender's default 50 mm lens on a 36 mm sensor: 50 / 36 * 512),
principal point (W / 2, H / 2) with pixel centres at integers, so x = (u - W / 2) * d / f,
y = (v - H / 2) * d / f, z = d in the camera frame (x right, y down, z forward, metres). A pixel is measured
when its depth is > 0 (the stage's ``valid_mask``). ``frame="world"`` applies the pose as the stage does,
X_world = pose @ X_camera. (M3DM and CFM instead apply ``inv(K @ pose)``, the inverse pose, then cut the
background with hand-set thresholds, swap y and z and scale by 0.1, which leaves metres; that is not
reproduced.) A category folder may carry ``intrinsics.json`` (:class:`patchbank.clouds.Intrinsics`, as the
MVTec-layout datasets do) for data rendered with another camera, e.g. Patchbank's synthetic Eyecandies; its
``depth_scale`` is unused, the depth's scale being ``info_depth.yaml``'s.

The house counts a point with any coordinate exactly 0 as missing (BTF's rule, :func:`valid_points`); the
published camera puts column W / 2 at x = 0 and row H / 2 at y = 0, so such coordinates of measured points
become :data:`ON_AXIS` (1 nm) instead.

Which lighting: M3DM and CFM copy ``image_4`` (the left spotlight), the default here
(:data:`DEFAULT_LIGHTING`); the official anomalib export (``dags/to_anomalib.yaml``) keeps ``image_5``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from patchbank.cloud_formats import read_png
from patchbank.clouds import Intrinsics, unproject
from patchbank.errors import DataError, InputError
from patchbank.preprocess import valid_points

CATEGORIES: Final[tuple[str, ...]] = (
    "CandyCane",
    "ChocolateCookie",
    "ChocolatePraline",
    "Confetto",
    "GummyBear",
    "HazelnutTruffle",
    "LicoriceSandwich",
    "Lollipop",
    "Marshmallow",
    "PeppermintCandy",
)
SPLITS: Final[tuple[str, ...]] = ("train", "val", "test_public", "test_private")
DATA_DIR: Final = "data"  # pipelime underfolder: every item of a split in one folder
LIGHTINGS: Final[tuple[str, ...]] = ("all spotlights", "bottom", "right", "top", "left", "global lighting")
DEFAULT_LIGHTING: Final = 4  # the left spotlight, as M3DM and CFM
FOCAL_LENGTH: Final = 711.11  # pixels, at RELEASED_SIZE
RELEASED_SIZE: Final = 512  # pixels, width and height of every released image
DEPTH_MAX: Final = 65535  # raw value of the depth's normalization max
ON_AXIS: Final = 1e-9  # metres: a measured point's coordinate that is exactly 0 becomes this
MASK_ITEMS: Final[tuple[str, ...]] = ("bumps_mask", "dents_mask", "colors_mask", "normals_mask", "mask")
INTRINSICS_FILE: Final = "intrinsics.json"
Frame = Literal["camera", "world"]
_NAME = re.compile(r"^(\d+)_(.+)$")
M = TypeVar("M", bound=BaseModel)


class DepthNormalization(BaseModel):
    """The metres that raw depth 0 and 65535 stand for."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min: float = Field(description="metres at raw depth 0")
    max: float = Field(description="metres at raw depth 65535")

    @model_validator(mode="after")
    def _ordered(self) -> DepthNormalization:
        if not self.max > self.min:
            raise ValueError(f"max ({self.max}) must be greater than min ({self.min})")
        return self


class DepthInfo(BaseModel):
    """``<NNN>_info_depth.yaml``: the depth PNG's normalization bounds (other keys are kept, unused)."""

    model_config = ConfigDict(extra="allow")

    normalization: DepthNormalization


class SampleMetadata(BaseModel):
    """``<NNN>_metadata.yaml``: the image-level label (other keys are kept, unused)."""

    model_config = ConfigDict(extra="allow")

    anomalous: int = Field(
        ge=0, le=1, description="1 when the sample holds an anomaly (the official anomalib export's query)"
    )


@dataclass(frozen=True)
class EyecandiesRef:
    """One sample of a split: its ``data`` folder and the prefix of its files (``007``); ``camera``: the
    category's ``intrinsics.json`` when it has one (else the published camera is used)."""

    category: str
    split: str
    index: int
    folder: Path
    prefix: str
    camera: Intrinsics | None = None

    def item(self, name: str) -> Path:
        """The path of one item's file, e.g. ``item("depth.png")``."""
        return self.folder / f"{self.prefix}_{name}"

    @property
    def name(self) -> str:
        """A stable id: ``split/NNN``."""
        return f"{self.split}/{self.prefix}"


@dataclass(frozen=True)
class EyecandiesSample:
    """One sample read: rgb (H, W, 3) uint8 of the chosen lighting; xyz (H, W, 3) float32 metres, organized,
    (0, 0, 0) where there is no depth; gt (H, W) uint8 0/255, None without a mask file (test_private)."""

    rgb: np.ndarray
    xyz: np.ndarray
    gt: np.ndarray | None


# --------------------------------------------------------------------------------------------- listing


def _split_dirs(root: Path, category: str) -> list[str]:
    return [s for s in SPLITS if (Path(root) / category / s / DATA_DIR).is_dir()]


def list_categories(root: Path) -> list[str]:
    """The folders of ``root`` holding at least one split's ``data`` folder, in name order; DataError when
    there is none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Eyecandies root {root} is not a directory")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and _split_dirs(root, d.name))
    if not found:
        raise DataError(
            f"{root} holds no Eyecandies category: expected <Category>/<split>/data/ with split one of "
            f"{', '.join(SPLITS)}"
        )
    return found


def list_splits(root: Path, category: str) -> list[str]:
    """The category's splits present on disk, in :data:`SPLITS` order; DataError naming what is there."""
    folder = Path(root) / category
    if not folder.is_dir():
        try:
            hint = f" (categories found: {', '.join(list_categories(root))})"
        except DataError:
            hint = ""
        raise DataError(f"Eyecandies category {category!r} not found: {folder} is not a directory{hint}")
    splits = _split_dirs(root, category)
    if not splits:
        raise DataError(f"{folder} has no split: expected one of {', '.join(s + '/data' for s in SPLITS)}")
    return splits


def category_camera(root: Path, category: str) -> Intrinsics | None:
    """The category's ``intrinsics.json``, None without one; DataError naming it when it is wrong."""
    path = Path(root) / category / INTRINSICS_FILE
    if not path.is_file():
        return None
    try:
        return Intrinsics.from_file(path)
    except InputError as exc:
        raise DataError(str(exc)) from exc


def list_samples(root: Path, category: str, split: str) -> list[EyecandiesRef]:
    """Every sample of one split in index order: the prefixes of the files in ``data``. DataError for an
    unknown or missing split, or one with no sample."""
    if split not in SPLITS:
        raise DataError(f"unknown Eyecandies split {split!r}; expected one of {', '.join(SPLITS)}")
    if split not in list_splits(root, category):
        raise DataError(
            f"split {split!r} not found: {Path(root) / category / split / DATA_DIR} is not a directory"
        )
    folder = Path(root) / category / split / DATA_DIR
    prefixes: dict[int, str] = {}
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            index = int(match.group(1))
            if prefixes.setdefault(index, match.group(1)) != match.group(1):
                raise DataError(
                    f"{folder}: sample {index} is written as both {prefixes[index]}_* and {match.group(1)}_*"
                )
    if not prefixes:
        raise DataError(f"{folder} holds no sample: expected files named <NNN>_<item>, e.g. 000_depth.png")
    camera = category_camera(root, category)
    return [EyecandiesRef(category, split, i, folder, prefixes[i], camera) for i in sorted(prefixes)]


# --------------------------------------------------------------------------------------------- items


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"missing file {path}: every Eyecandies sample has it")
    return path


def _yaml(path: Path) -> Any:
    import yaml  # PyYAML (the engine extra): imported here, so that the command's --help stays light

    try:
        return yaml.safe_load(_need(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise DataError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from exc


def _model(model: type[M], path: Path) -> M:
    try:
        return model.model_validate(_yaml(path))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise DataError(f"{path}: {key + ': ' if key else ''}{first['msg']}") from exc


def read_depth_info(path: Path) -> DepthInfo:
    """An ``info_depth.yaml``; DataError naming the file and the first wrong key."""
    return _model(DepthInfo, path)


def read_metadata(path: Path) -> SampleMetadata:
    """A ``metadata.yaml``; DataError naming the file and the first wrong key."""
    return _model(SampleMetadata, path)


def read_depth(ref: EyecandiesRef) -> np.ndarray:
    """The depth (H, W) float64 in metres: raw / 65535 * (max - min) + min (``DepthToMetersStage``)."""
    path = _need(ref.item("depth.png"))
    info = read_depth_info(ref.item("info_depth.yaml")).normalization
    try:
        raw = read_png(path.read_bytes(), str(path), 2**62).array
    except InputError as exc:
        raise DataError(f"{exc}") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc
    if raw.ndim != 2 or raw.min() < 0 or raw.max() > DEPTH_MAX:
        raise DataError(f"{path}: the depth must be a 16-bit grey PNG (0..{DEPTH_MAX})")
    return raw.astype(np.float64) / DEPTH_MAX * (info.max - info.min) + info.min


def read_pose(path: Path) -> np.ndarray:
    """A ``pose.txt``: the camera's (4, 4) float64 pose in the world (rows of 4 numbers, last 0 0 0 1)."""
    try:
        pose = np.loadtxt(_need(path), dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a 4 x 4 matrix of numbers: {' '.join(str(exc).split())}") from exc
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise DataError(f"{path} must hold a finite 4 x 4 matrix, got shape {pose.shape}")
    if not np.allclose(pose[3], [0.0, 0.0, 0.0, 1.0]):
        raise DataError(f"{path}: a pose's last row is 0 0 0 1, got {' '.join(f'{v:g}' for v in pose[3])}")
    return pose


def _image(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(_need(path)) as im:
            return np.asarray(im.convert(mode))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {' '.join(str(exc).split())}") from exc


def read_rgb(ref: EyecandiesRef, lighting: int = DEFAULT_LIGHTING) -> np.ndarray:
    """``image_<lighting>.png`` as (H, W, 3) uint8."""
    if lighting not in range(len(LIGHTINGS)):
        raise InputError(f"lighting must be 0..{len(LIGHTINGS) - 1} ({', '.join(LIGHTINGS)}), got {lighting}")
    return _image(ref.item(f"image_{lighting}.png"), "RGB")


def read_mask(ref: EyecandiesRef) -> np.ndarray | None:
    """``mask.png`` (the union of the four kinds) as (H, W) uint8 0/255; None when the sample has none."""
    path = ref.item("mask.png")
    if not path.is_file():
        return None
    return np.where(_image(path, "L") > 0, np.uint8(255), np.uint8(0))


def is_anomalous(ref: EyecandiesRef) -> bool:
    """The sample's label: ``metadata.yaml``'s ``anomalous`` (the official anomalib export splits
    test_public on it), else whether ``mask.png`` marks any pixel (M3DM, CFM); DataError without either."""
    if ref.item("metadata.yaml").is_file():
        return read_metadata(ref.item("metadata.yaml")).anomalous == 1
    mask = read_mask(ref)
    if mask is None:
        raise DataError(
            f"cannot tell whether {ref.folder / ref.prefix}_* is anomalous: it has neither "
            f"{ref.prefix}_metadata.yaml nor {ref.prefix}_mask.png (test_private has no labels)"
        )
    return bool(mask.any())


# --------------------------------------------------------------------------------------------- clouds


def published_camera(width: int, height: int) -> Intrinsics:
    """The released data's camera for an image of ``width`` x ``height`` pixels: f = 711.11 px at 512 px
    wide, scaled with the width (Blender fits its sensor to the width), principal point (W / 2, H / 2)."""
    f = FOCAL_LENGTH * width / RELEASED_SIZE
    return Intrinsics(fx=f, fy=f, cx=width / 2, cy=height / 2, depth_scale=1.0, width=width, height=height)


def depth_to_xyz(depth: np.ndarray, camera: Intrinsics, pose: np.ndarray | None = None) -> np.ndarray:
    """(H, W) depth in metres -> (H, W, 3) float32 metres: the camera frame, or the world frame with the
    camera's ``pose`` (X_world = pose @ X_camera); (0, 0, 0) where the depth is not > 0. A measured point's
    coordinate that is exactly 0 becomes :data:`ON_AXIS`, so the point stays valid (:func:`valid_points`)."""
    xyz = unproject(depth, camera.model_copy(update={"depth_scale": 1.0}))
    measured = xyz[..., 2] > 0
    if pose is not None:
        pts = xyz[measured].astype(np.float64)
        xyz[measured] = (pts @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)
    on_axis = (xyz == 0) & measured[..., None]
    xyz[on_axis] = ON_AXIS
    return xyz


def read_sample(
    ref: EyecandiesRef, lighting: int = DEFAULT_LIGHTING, frame: Frame = "camera"
) -> EyecandiesSample:
    """One sample as the banks want it (see :class:`EyecandiesSample`), with the category's camera (else the
    published one) in the camera or the world frame. DataError naming the file for a missing or malformed
    item, or items of different sizes."""
    if frame not in ("camera", "world"):
        raise InputError(f"frame must be camera or world, got {frame!r}")
    rgb = read_rgb(ref, lighting)
    depth = read_depth(ref)
    h, w = depth.shape
    camera = ref.camera or published_camera(w, h)
    if (camera.width, camera.height) not in ((None, None), (w, h)):
        raise DataError(
            f"{ref.item('depth.png')} is {w} x {h} but the category's {INTRINSICS_FILE} is for "
            f"{camera.width} x {camera.height} images"
        )
    pose = read_pose(ref.item("pose.txt")) if frame == "world" else None
    xyz = depth_to_xyz(depth, camera, pose)
    gt = read_mask(ref)
    for item, shape in (
        (f"image_{lighting}.png", rgb.shape[:2]),
        ("mask.png", None if gt is None else gt.shape),
    ):
        if shape is not None and shape != (h, w):
            raise DataError(
                f"{ref.item(item)} is {shape[1]} x {shape[0]} but {ref.item('depth.png').name} is {w} x {h}"
            )
    if not valid_points(xyz).any():
        raise DataError(f"{ref.item('depth.png')} has no measured point (every depth is 0)")
    return EyecandiesSample(rgb, xyz, gt)
