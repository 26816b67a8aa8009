"""Writing a dataset (MVTec 3D-AD layout) with its point clouds in another format: what a line's sensor
sends (a 16-bit PNG or float TIFF depth image, an organized PLY or PCD, ``.npy``), to build and check banks
on it.

RGB images and ground-truth masks are copied unchanged; every cloud is written in the new format and read
back through :mod:`patchbank.clouds`, and the largest difference from the source cloud is reported. Depth
formats keep only z, so they need the pinhole camera that saw the cloud: given, or fitted per category by
least squares from the clouds themselves (u = fx * x / z + cx, v = fy * y / z + cy over every valid point),
and refused when the clouds do not follow a pinhole model (reprojection RMS over
:data:`MAX_REPROJECTION_PX`). The camera is written to ``<out>/<category>/intrinsics.json``, where the
dataset reader finds it.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from patchbank.cloud_write import PNG_MAX, SUFFIX, encode_cloud
from patchbank.clouds import Intrinsics, decode_cloud
from patchbank.data import INTRINSICS_FILE, SPLITS, SampleRef, has_split, list_samples, read_xyz
from patchbank.errors import DataError, InputError
from patchbank.preprocess import valid_points

FORMATS = ("depth-png", "depth-tiff", "ply", "pcd", "npy", "tiff")
DEPTH_FORMATS = ("depth-png", "depth-tiff")
PNG_SCALES = (1e-6, 1e-5, 1e-4, 1e-3)  # metres per unit tried for a 16-bit PNG, finest first
MAX_REPROJECTION_PX = 0.1  # RMS, pixels: above this the clouds are not from a pinhole camera


@dataclass
class _Moments:
    """Sums for the least-squares line ``pixel = f * ratio + c`` over many points (one image axis)."""

    n: float = 0.0
    a: float = 0.0
    aa: float = 0.0
    p: float = 0.0
    ap: float = 0.0
    pp: float = 0.0

    def add(self, ratio: np.ndarray, pixel: np.ndarray) -> None:
        self.n += ratio.size
        self.a += float(ratio.sum())
        self.aa += float(ratio @ ratio)
        self.p += float(pixel.sum())
        self.ap += float(ratio @ pixel)
        self.pp += float(pixel @ pixel)

    def solve(self) -> tuple[float, float]:
        """(f, c) of the least-squares line."""
        f, c = np.linalg.solve([[self.aa, self.a], [self.a, self.n]], [self.ap, self.p])
        return float(f), float(c)

    def rms(self, f: float, c: float) -> float:
        """Root mean square of ``pixel - (f * ratio + c)``, pixels."""
        rss = (
            self.pp - 2 * f * self.ap - 2 * c * self.p + f * f * self.aa + 2 * f * c * self.a + self.n * c * c
        )
        return math.sqrt(max(rss, 0.0) / self.n)


@dataclass
class CameraFit:
    """What the clouds of a category say about their camera: the pinhole model fitted to them (with their
    image size when they share one), the reprojection RMS of a camera (pixels), the largest depth (metres)."""

    u: _Moments = field(default_factory=_Moments)
    v: _Moments = field(default_factory=_Moments)
    max_depth: float = 0.0
    sizes: set[tuple[int, int]] = field(default_factory=set)  # (width, height) of the clouds

    def add(self, xyz: np.ndarray) -> None:
        self.sizes.add((xyz.shape[1], xyz.shape[0]))
        valid = valid_points(xyz) & (xyz[..., 2] > 0)
        rows, cols = np.nonzero(valid)
        pts = xyz[valid].astype(np.float64)
        self.u.add(pts[:, 0] / pts[:, 2], cols.astype(np.float64))
        self.v.add(pts[:, 1] / pts[:, 2], rows.astype(np.float64))
        self.max_depth = max(self.max_depth, float(pts[:, 2].max(initial=0.0)))

    def intrinsics(self, depth_scale: float) -> Intrinsics:
        if self.u.n < 3:
            raise InputError("too few valid points to fit the camera's intrinsics")
        (fx, cx), (fy, cy) = self.u.solve(), self.v.solve()
        if not (fx > 0 and fy > 0):
            raise InputError(
                f"the clouds do not follow a pinhole camera (fitted focal lengths {fx:.4g}, {fy:.4g} px); "
                "a depth image would lose their x and y: write ply, pcd or npy instead"
            )
        width, height = next(iter(self.sizes)) if len(self.sizes) == 1 else (None, None)
        return Intrinsics(fx=fx, fy=fy, cx=cx, cy=cy, depth_scale=depth_scale, width=width, height=height)

    def reprojection_px(self, cam: Intrinsics) -> float:
        """RMS distance (pixels) between each valid point's pixel and where ``cam`` projects it."""
        return math.hypot(self.u.rms(cam.fx, cam.cx), self.v.rms(cam.fy, cam.cy))


def fit_intrinsics(clouds: Iterable[np.ndarray], depth_scale: float = 1.0) -> tuple[Intrinsics, float]:
    """The pinhole intrinsics that best project the clouds' valid points onto their pixels (least squares
    per axis), and their reprojection RMS in pixels."""
    fit = CameraFit()
    for xyz in clouds:
        fit.add(xyz)
    cam = fit.intrinsics(depth_scale)
    return cam, fit.reprojection_px(cam)


def png_depth_scale(max_depth: float) -> float:
    """The finest of :data:`PNG_SCALES` at which ``max_depth`` (metres) fits a 16-bit PNG."""
    for scale in PNG_SCALES:
        if max_depth / scale <= PNG_MAX:
            return scale
    raise InputError(f"depth up to {max_depth:.4g} m does not fit a 16-bit PNG even in millimetres")


@dataclass
class Converted:
    """One category written in the new format."""

    category: str
    out: Path
    clouds: int
    intrinsics: Intrinsics | None  # depth formats: the camera written to intrinsics.json
    fitted: bool  # the intrinsics were fitted from the clouds (not given)
    reprojection_px: float | None  # depth formats: RMS reprojection of the clouds with the intrinsics
    max_error_m: float  # largest |read back - source| over every coordinate of every valid point
    changed_points: int  # points valid in one and missing in the other (0 expected)


def categories_of(root: Path) -> list[str]:
    """The folders of ``root`` that hold at least one split."""
    if not Path(root).is_dir():
        raise DataError(f"dataset root {root} is not a directory")
    return sorted(d.name for d in Path(root).iterdir() if any(has_split(root, d.name, s) for s in SPLITS))


def _camera(
    refs: Sequence[SampleRef], fmt: str, given: Intrinsics | None, depth_scale: float | None
) -> tuple[Intrinsics, bool, float]:
    """The camera a depth format is written with, whether it was fitted, and its reprojection RMS."""
    fit = CameraFit()
    for ref in refs:
        fit.add(read_xyz(ref.xyz, ref.intrinsics))
    scale = depth_scale or (given.depth_scale if given else None)
    if scale is None:
        scale = png_depth_scale(fit.max_depth) if fmt == "depth-png" else 1.0
    try:
        cam = (given or fit.intrinsics(scale)).model_copy(update={"depth_scale": scale})
    except InputError as exc:
        raise InputError(f"{refs[0].category}: {exc}") from exc
    rms = fit.reprojection_px(cam)
    if rms > MAX_REPROJECTION_PX:
        raise InputError(
            f"{refs[0].category}: the clouds do not follow a pinhole camera (reprojection RMS {rms:.3g} px "
            f"with fx {cam.fx:.6g}, fy {cam.fy:.6g}, cx {cam.cx:.6g}, cy {cam.cy:.6g}); a depth image would "
            "lose their x and y: write ply, pcd or npy instead"
        )
    return cam, given is None, rms


def _copy(src: Path | None, folder: Path) -> None:
    if src is not None:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, folder / src.name)


def convert_category(
    root: Path,
    out: Path,
    category: str,
    fmt: str,
    splits: Sequence[str] = SPLITS,
    intrinsics: Intrinsics | None = None,
    depth_scale: float | None = None,
    progress: bool = True,
) -> Converted:
    """Write one category's splits under ``out`` with its clouds as ``fmt`` (see the module's docstring)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    refs = [r for s in splits if has_split(root, category, s) for r in list_samples(root, category, s)]
    if not refs:
        raise DataError(f"{Path(root) / category} has none of the splits {', '.join(splits)}")
    cam, fitted, rms = (None, False, None)
    if fmt in DEPTH_FORMATS:
        cam, fitted, rms = _camera(refs, fmt, intrinsics, depth_scale)
    worst, changed = 0.0, 0
    for ref in tqdm(refs, desc=f"{category} -> {fmt}", unit="cloud", disable=not progress):
        kind_dir = Path(out) / category / ref.split / ref.kind
        xyz = read_xyz(ref.xyz, ref.intrinsics)
        data = encode_cloud(xyz, fmt, cam)
        target = kind_dir / "xyz" / (ref.xyz.stem + SUFFIX[fmt])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        _copy(ref.rgb, kind_dir / "rgb")
        _copy(ref.gt, kind_dir / "gt")
        back = decode_cloud(data, target.name, str(target), max_pixels=2**62, intrinsics=cam)
        valid, valid_back = valid_points(xyz), valid_points(back)
        changed += int((valid != valid_back).sum())
        both = valid & valid_back
        if both.any():
            worst = max(worst, float(np.abs(back[both].astype(np.float64) - xyz[both]).max()))
    if cam is not None:
        (Path(out) / category / INTRINSICS_FILE).write_text(cam.model_dump_json(indent=2, exclude_none=True))
    return Converted(category, Path(out) / category, len(refs), cam, fitted, rms, worst, changed)


def convert_dataset(
    root: Path,
    out: Path,
    fmt: str,
    categories: Sequence[str] | None = None,
    splits: Sequence[str] = SPLITS,
    intrinsics: Intrinsics | None = None,
    depth_scale: float | None = None,
    progress: bool = True,
) -> list[Converted]:
    """:func:`convert_category` for each category of ``root`` (all by default) into ``out``."""
    if Path(out).resolve() == Path(root).resolve():
        raise InputError(f"the converted dataset needs a folder of its own, not the source {root}")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise InputError(f"unknown splits {', '.join(unknown)}; expected some of {', '.join(SPLITS)}")
    names = list(categories) if categories else categories_of(root)
    if not names:
        raise DataError(f"{root} holds no category with a {', '.join(SPLITS)} split")
    return [convert_category(root, out, c, fmt, splits, intrinsics, depth_scale, progress) for c in names]
