"""Reading datasets in the MVTec 3D-AD layout.

``ROOT/<category>/{train,validation,test}/<kind>/{rgb,xyz,gt}/NNN.{png,tiff}``: ``kind`` is ``good`` or a
defect name. RGB is any size (not necessarily square); xyz is an organized point cloud, H x W x 3 float32 in
metres with (0, 0, 0) for missing points; gt is an 8-bit PNG where any value > 0 is anomalous (MVTec 3D-AD
stores the defect class as 253-255). Good samples without gt files get all-zero masks.

An xyz file may be any format :mod:`patchbank.clouds` reads (``.tiff``, ``.npy``, ``.ply``, ``.pcd``, or a
depth image ``.png`` / ``.tiff``), in metres. Depth images need the camera: ``ROOT/<category>/intrinsics.json``
(:class:`patchbank.clouds.Intrinsics`), else MVTec 3D-AD's
``ROOT/<category>/calibration/camera_parameters.json`` (:mod:`patchbank.camera_parameters`), which every
sample of the category carries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from patchbank.camera_parameters import CALIBRATION_FILE, CameraParameters
from patchbank.cloud_formats import SUFFIXES, UnreadableCloud
from patchbank.clouds import Intrinsics, decode_cloud, organized
from patchbank.errors import DataError, InputError

SPLITS = ("train", "validation", "test")
GOOD = "good"
RGB_SUFFIXES = (".png", ".jpg", ".jpeg")
XYZ_SUFFIXES = tuple(SUFFIXES)  # every point cloud format patchbank.clouds reads
INTRINSICS_FILE = "intrinsics.json"  # a category's camera, for depth images


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives on disk. ``gt`` is None for good samples without a mask file; ``intrinsics``:
    the category's camera (for depth images), None when the dataset has none."""

    category: str
    split: str
    kind: str
    rgb: Path
    xyz: Path
    gt: Path | None
    intrinsics: Intrinsics | None = None

    @property
    def label(self) -> int:
        """0 for good, 1 for any defect kind."""
        return 0 if self.kind == GOOD else 1

    @property
    def name(self) -> str:
        """A stable id: ``split/kind/stem``."""
        return f"{self.split}/{self.kind}/{self.rgb.stem}"


def category_dir(root: Path, category: str) -> Path:
    """The category's folder, or a DataError naming what is there instead."""
    path = Path(root) / category
    if not path.is_dir():
        found = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        hint = f" (categories found: {', '.join(found)})" if found else f" ({root} has no category folders)"
        raise DataError(f"category {category!r} not found: {path} is not a directory{hint}")
    return path


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes) if folder.is_dir() else []


def has_split(root: Path, category: str, split: str) -> bool:
    """True when ``split`` exists for the category and holds at least one rgb file."""
    split_dir = Path(root) / category / split
    return split_dir.is_dir() and any(
        _files(d / "rgb", RGB_SUFFIXES) for d in split_dir.iterdir() if d.is_dir()
    )


def category_intrinsics(root: Path, category: str) -> Intrinsics | None:
    """The category's ``intrinsics.json``, else its MVTec 3D-AD ``calibration/camera_parameters.json`` as a
    pinhole camera; None when it has neither; DataError naming the file when it is wrong."""
    path = Path(root) / category / INTRINSICS_FILE
    if not path.is_file():
        calibration = Path(root) / category / CALIBRATION_FILE
        return CameraParameters.from_file(calibration).intrinsics() if calibration.is_file() else None
    try:
        return Intrinsics.from_file(path)
    except InputError as exc:
        raise DataError(str(exc)) from exc


def list_samples(
    root: Path,
    category: str,
    split: str,
    kinds: Iterable[str] | None = None,
    intrinsics: Intrinsics | None = None,
) -> list[SampleRef]:
    """Every sample of one split, good first then defect kinds in name order, files in name order; each
    carries ``intrinsics``, else the category's camera (:func:`category_intrinsics`, for depth images).

    Raises DataError naming the path for a missing category or split, an empty split, or a kind whose rgb and
    xyz counts (or names) do not match.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    split_dir = category_dir(root, category) / split
    if not split_dir.is_dir():
        raise DataError(f"split {split!r} not found: {split_dir} is not a directory")
    present = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    wanted = present if kinds is None else [k for k in kinds if k in present]
    wanted.sort(key=lambda k: (k != GOOD, k))
    camera = intrinsics or category_intrinsics(root, category)
    samples: list[SampleRef] = []
    for kind in wanted:
        samples.extend(_kind_samples(category, split, split_dir / kind, camera))
    if not samples:
        raise DataError(f"split {split!r} of category {category!r} is empty: no rgb images under {split_dir}")
    return samples


def _kind_samples(
    category: str, split: str, kind_dir: Path, intrinsics: Intrinsics | None
) -> list[SampleRef]:
    rgbs = _files(kind_dir / "rgb", RGB_SUFFIXES)
    xyzs = _files(kind_dir / "xyz", XYZ_SUFFIXES)
    if len(rgbs) != len(xyzs):
        raise DataError(
            f"{kind_dir}: {len(rgbs)} rgb images but {len(xyzs)} xyz point clouds; every sample needs both"
        )
    gts = {p.stem: p for p in _files(kind_dir / "gt", RGB_SUFFIXES)}
    kind = kind_dir.name
    samples = []
    for rgb, xyz in zip(rgbs, xyzs, strict=True):
        if rgb.stem != xyz.stem:
            raise DataError(f"{kind_dir}: rgb/{rgb.name} is paired with xyz/{xyz.name}; names must match")
        gt = gts.get(rgb.stem)
        if gt is None and kind != GOOD and split == "test":
            raise DataError(
                f"{kind_dir}: defect sample {rgb.name} has no ground-truth mask gt/{rgb.stem}.png"
            )
        samples.append(SampleRef(category, split, kind, rgb, xyz, gt, intrinsics))
    return samples


def read_rgb(path: Path) -> Image.Image:
    """The image as 8-bit RGB (any size)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read RGB image {path}: {exc}") from exc


def read_xyz(path: Path, intrinsics: Intrinsics | None = None) -> np.ndarray:
    """The organized point cloud in any format :mod:`patchbank.clouds` reads (a depth image with
    ``intrinsics``): (H, W, 3) float32, metres, (0, 0, 0) = no measurement. DataError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read xyz {path}: {exc.strerror}") from exc
    try:
        return decode_cloud(data, Path(path).name, str(path), max_pixels=2**62, intrinsics=intrinsics)
    except UnreadableCloud as exc:
        raise DataError(f"cannot read xyz {exc.kind} {path}: {exc.reason}") from exc
    except InputError as exc:
        raise DataError(str(exc)) from exc


def check_xyz(xyz: np.ndarray, where: str) -> np.ndarray:
    """Validate an organized cloud's shape and type; non-finite points become missing (0, 0, 0)."""
    try:
        return organized(xyz, where)
    except InputError as exc:
        raise DataError(str(exc)) from exc


def read_mask(ref: SampleRef, shape: tuple[int, int]) -> np.ndarray:
    """The ground truth as bool (H, W), True where anomalous; all False (of ``shape``) without a gt file."""
    if ref.gt is None:
        return np.zeros(shape, dtype=bool)
    try:
        with Image.open(ref.gt) as im:
            gt = np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read ground-truth mask {ref.gt}: {exc}") from exc
    return gt > 0


def digest(samples: Iterable[SampleRef]) -> str:
    """sha256 over the samples' names and file bytes: identifies a training set."""
    h = hashlib.sha256()
    for ref in samples:
        h.update(ref.name.encode())
        for path in (ref.rgb, ref.xyz):
            h.update(path.read_bytes())
    return h.hexdigest()
