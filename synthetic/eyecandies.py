"""Synthetic data in the Eyecandies layout (``make-demo-data --layout eyecandies``), rendered by the demo
renderer (:func:`patchbank_synthetic.demo_data.render_sample`) and written as the released dataset is
(eyecan-ai/eyecandies ``docs/download.md``, "FORMAT"; read back by :mod:`patchbank.eyecandies`)::

    OUT/<Category>/{train,val,test_public}/data/<NNN>_<item>.<ext>

Categories carry Eyecandies's names (:data:`SHAPES` maps each to a demo shape: round candies to the puck,
long ones to the bracket); each draws its own samples (its seed is derived from the seed and the name), so
two categories of one shape differ. ``train`` and ``val`` hold good samples; ``test_public`` holds ``n_test``
good and ``n_test`` bad ones, interleaved (even indices good), the bad ones cycling through the demo's defect
kinds. ``NNN`` is zero-padded to the split's width (``000``-``999`` for 1000 samples, as released).

Every item of a released sample is written, from one rendered sample (rgb, camera-frame xyz, gt):

- ``image_5`` (global lighting) is the rendered RGB; ``image_1`` ... ``image_4`` re-shade it under a
  spotlight from the bottom, right, top and left, :data:`SPOTLIGHT_POLAR_DEG` off the optical axis:
  rgb * (AMBIENT + DIFFUSE * max(0, n . l)) / (AMBIENT + DIFFUSE * cos(polar)), n the normals below, so a
  surface facing the camera keeps its colour; ``image_0`` (all spotlights) uses the four lights' mean;
- ``depth``: z as a 16-bit PNG over ``info_depth.yaml``'s [min, max] with min = 0 m, so the renderer's
  missing points (depth 0) stay missing (the official ``DepthToPCStage`` keeps depth > 0 only); the released
  files have no missing pixel and min > 0. One raw step is max / 65535 (about 8 um at 0.5 m);
- ``normals``: unit normals of the cloud (smoothed over 5 x 5 valid points, facing the camera where
  unknown) as (n + 1) * 127.5 with Y and Z flipped (the released convention);
- ``pose``: camera to world, the world being the table: z up along the plane fitted to the image border's
  points, x along the camera's x, origin where the optical axis meets the table;
- ``metadata.yaml`` (``anomalous``), ``obj_params.yaml`` (:class:`ObjParams`: which demo sample this is),
  and the masks: the defect's pixels (255) in ``mask`` and in its kind's mask (:data:`KIND_MASKS`).

The demo camera is not Eyecandies's (f = 711.11 px, principal point (W / 2, H / 2)), so each category also
gets ``intrinsics.json`` (:class:`patchbank.clouds.Intrinsics`, fitted to its first sample's cloud), which the
reader uses instead of the published camera. Every file depends only on (seed, category, split, index, size,
shift); a category is written into a hidden sibling folder and swapped into place whole.
"""

from __future__ import annotations

import argparse
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from patchbank.convert import fit_intrinsics
from patchbank.errors import InputError
from patchbank.eyecandies import (
    CATEGORIES,
    INTRINSICS_FILE,
    MASK_ITEMS,
    DepthInfo,
    DepthNormalization,
    SampleMetadata,
)
from patchbank.preprocess import valid_points
from patchbank_synthetic.cli import parse_size
from patchbank_synthetic.demo_data import DEFECT_KINDS, GOOD, DemoSample, render_sample, staged_folder

SHAPES: Final[dict[str, str]] = {
    "CandyCane": "bracket",
    "ChocolateCookie": "puck",
    "ChocolatePraline": "puck",
    "Confetto": "puck",
    "GummyBear": "bracket",
    "HazelnutTruffle": "puck",
    "LicoriceSandwich": "bracket",
    "Lollipop": "puck",
    "Marshmallow": "puck",
    "PeppermintCandy": "puck",
}
DEFAULT_CATEGORIES: Final[tuple[str, ...]] = ("Confetto", "LicoriceSandwich")
SOURCE_SPLITS: Final[dict[str, str]] = {"train": "train", "val": "validation", "test_public": "test"}
KIND_MASKS: Final[dict[str, str]] = {
    "hole": "dents_mask",
    "crack": "dents_mask",
    "cut": "dents_mask",
    "bump": "bumps_mask",
    "stain": "colors_mask",
}
SPOTLIGHT_POLAR_DEG: Final = 50.0
AMBIENT: Final = 0.5
DIFFUSE: Final = 0.5
# image_1..image_4: where the spotlight stands in the image (x right, y down): bottom, right, top, left
SPOTLIGHTS: Final[dict[int, tuple[float, float]]] = {
    1: (0.0, 1.0),
    2: (1.0, 0.0),
    3: (0.0, -1.0),
    4: (-1.0, 0.0),
}
NORMAL_RADIUS: Final = 2  # pixels: normals from the cloud smoothed over (2 r + 1)^2 valid points
GENERATOR: Final = "patchbank make-demo-data --layout eyecandies"


class ObjParams(BaseModel):
    """``<NNN>_obj_params.yaml``: which demo sample this sample was rendered from."""

    model_config = ConfigDict(extra="forbid")

    generator: str = Field(GENERATOR, description="what wrote the file")
    shape: str = Field(description="the demo category rendered (patchbank_synthetic.demo_data)")
    kind: str = Field(description="good, or the demo defect kind")
    split: str = Field(description="the demo split rendered")
    index: int = Field(description="the demo sample's index")
    seed: int = Field(description="the demo seed (derived from the generator's seed and the category)")
    shift: float = Field(description="the demo line drift")


@dataclass(frozen=True)
class RenderCall:
    """The demo sample an Eyecandies sample is rendered from: :meth:`render` is ``render_sample`` with it."""

    shape: str
    kind: str
    split: str
    index: int
    seed: int
    size: tuple[int, int]
    shift: float

    def render(self) -> DemoSample:
        return render_sample(
            self.shape,
            self.kind,
            split=self.split,
            index=self.index,
            size=self.size,
            seed=self.seed,
            shift=self.shift,
        )

    def params(self) -> ObjParams:
        return ObjParams(
            shape=self.shape,
            kind=self.kind,
            split=self.split,
            index=self.index,
            seed=self.seed,
            shift=self.shift,
        )


def category_name(name: str) -> str:
    """Eyecandies's spelling of a category (case- and space-insensitive, as ``ec-get``); InputError listing
    the names for an unknown one."""
    wanted = "".join(name.lower().split())
    for known in CATEGORIES:
        if known.lower() == wanted:
            return known
    raise InputError(f"unknown Eyecandies category {name!r}; valid choices: {', '.join(CATEGORIES)}")


def category_seed(seed: int, category: str) -> int:
    """The demo seed of one category's samples, from the generator's seed and the category's name."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")
    entropy = [seed, CATEGORIES.index(category_name(category))]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def source_of(
    category: str, split: str, index: int, size: tuple[int, int], seed: int, shift: float = 0.0
) -> RenderCall:
    """The demo sample that sample ``index`` of ``split`` (train, val, test_public) is rendered from."""
    if split not in SOURCE_SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SOURCE_SPLITS)}")
    kind, demo_index = GOOD, index
    if split == "test_public":
        demo_index = index // 2
        if index % 2:
            kind = DEFECT_KINDS[demo_index % len(DEFECT_KINDS)]
    name = category_name(category)
    return RenderCall(
        SHAPES[name], kind, SOURCE_SPLITS[split], demo_index, category_seed(seed, name), size, shift
    )


# --------------------------------------------------------------------------------------------- items


def _box_sum(a: np.ndarray, r: int) -> np.ndarray:
    """Sum over the (2 r + 1)^2 window around each pixel of (H, W, ...) ``a`` (zeros outside)."""
    pad = ((r + 1, r), (r + 1, r)) + ((0, 0),) * (a.ndim - 2)
    c = np.pad(a, pad).cumsum(axis=0).cumsum(axis=1)
    k = 2 * r + 1
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


def surface_normals(xyz: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) float64 in the camera frame (x right, y down, z forward), facing the camera,
    from the cloud's valid points smoothed over 5 x 5 pixels; (0, 0, -1) where too few points are near."""
    valid = valid_points(xyz)
    count = _box_sum(valid.astype(np.float64), NORMAL_RADIUS)
    total = _box_sum(np.where(valid[..., None], xyz, 0.0).astype(np.float64), NORMAL_RADIUS)
    smooth = total / np.maximum(count, 1.0)[..., None]
    n = -np.cross(np.gradient(smooth, axis=1), np.gradient(smooth, axis=0))
    length = np.linalg.norm(n, axis=2)
    known = (_box_sum((count > 0).astype(np.float64), 1) == 9) & (length > 0)  # every neighbour smoothed
    out = np.zeros_like(n)
    out[..., 2] = -1.0
    out[known] = n[known] / length[known][:, None]
    return out


def lighting_variants(rgb: np.ndarray, normals: np.ndarray) -> list[np.ndarray]:
    """``image_0`` ... ``image_5`` (H, W, 3) uint8 from the rendered RGB and camera-frame normals."""
    polar = math.radians(SPOTLIGHT_POLAR_DEG)
    flat = AMBIENT + DIFFUSE * math.cos(polar)
    lambert = {
        k: np.clip(
            normals @ np.array([math.sin(polar) * dx, math.sin(polar) * dy, -math.cos(polar)]), 0, None
        )
        for k, (dx, dy) in SPOTLIGHTS.items()
    }
    lambert[0] = np.mean([lambert[k] for k in SPOTLIGHTS], axis=0)

    def shade(k: int) -> np.ndarray:
        gain = (AMBIENT + DIFFUSE * lambert[k]) / flat
        return np.clip(np.rint(rgb * gain[..., None]), 0, 255).astype(np.uint8)

    return [*(shade(k) for k in range(5)), rgb]


def table_pose(xyz: np.ndarray) -> np.ndarray:
    """Camera-to-world (4, 4): the world is the table plane fitted (least squares) to the valid points of
    the image's border ring, z up towards the camera, x along the camera's x, origin on the optical axis."""
    h, w = xyz.shape[:2]
    ring = np.ones((h, w), dtype=bool)
    b = max(2, min(h, w) // 16)
    ring[b:-b, b:-b] = False
    pts = xyz[ring & valid_points(xyz)].astype(np.float64)
    centre = pts.mean(axis=0)
    normal = np.linalg.svd(pts - centre, full_matrices=False)[2][2]
    if normal @ centre > 0:  # towards the camera (at the origin)
        normal = -normal
    x = np.array([1.0, 0.0, 0.0]) - normal[0] * normal
    x /= np.linalg.norm(x)
    rot = np.stack([x, np.cross(normal, x), normal])  # rows: the world axes in the camera frame
    origin = np.array([0.0, 0.0, (centre @ normal) / normal[2]])  # the optical axis meets the table
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = -rot @ origin
    return pose


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _yaml(model: BaseModel) -> bytes:
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False).encode()


def depth_png(xyz: np.ndarray) -> tuple[np.ndarray, DepthInfo]:
    """The cloud's depth as (H, W) uint16 over [0, max z] and its ``info_depth``; 0 where missing."""
    valid = valid_points(xyz)
    z = np.where(valid, xyz[..., 2].astype(np.float64), 0.0)
    top = float(z.max())
    raw = np.rint(z / top * 65535).astype(np.uint16)
    return raw, DepthInfo(normalization=DepthNormalization(min=0.0, max=top))


def sample_files(call: RenderCall, sample: DemoSample) -> dict[str, bytes]:
    """Every item of one released sample (file name after ``<NNN>_`` -> bytes)."""
    normals = surface_normals(sample.xyz)
    files = {f"image_{i}.png": _png(im) for i, im in enumerate(lighting_variants(sample.rgb, normals))}
    raw, info = depth_png(sample.xyz)
    files["depth.png"] = _png(raw)
    files["info_depth.yaml"] = _yaml(info)
    flipped = normals * np.array([1.0, -1.0, -1.0])
    files["normals.png"] = _png(np.clip(np.rint((flipped + 1.0) * 127.5), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    np.savetxt(buf, table_pose(sample.xyz))
    files["pose.txt"] = buf.getvalue()
    files["obj_params.yaml"] = _yaml(call.params())
    files["metadata.yaml"] = _yaml(SampleMetadata(anomalous=call.kind != GOOD))
    gt = np.where(sample.gt > 0, np.uint8(255), np.uint8(0))
    empty = np.zeros_like(gt)
    for item in MASK_ITEMS:
        files[f"{item}.png"] = _png(gt if item in ("mask", KIND_MASKS.get(call.kind)) else empty)
    return files


# --------------------------------------------------------------------------------------------- writing


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _write_category(
    out: Path,
    name: str,
    plan: dict[str, int],
    size: tuple[int, int],
    seed: int,
    shift: float,
    bar: tqdm,
) -> Path:
    with staged_folder(out / name) as staged:
        first: np.ndarray | None = None
        for split, count in plan.items():
            if count == 0:
                continue
            folder = staged / split / "data"
            folder.mkdir(parents=True)
            width = len(str(count - 1))
            for index in range(count):
                call = source_of(name, split, index, size, seed, shift)
                sample = call.render()
                first = sample.xyz if first is None else first
                for item, data in sample_files(call, sample).items():
                    (folder / f"{index:0{width}d}_{item}").write_bytes(data)
                bar.update(1)
        assert first is not None  # n_train >= 1
        camera, _ = fit_intrinsics([first])
        (staged / INTRINSICS_FILE).write_text(camera.model_dump_json(indent=2, exclude_none=True))
    return out / name


def generate(
    out: Path,
    categories: list[str] | tuple[str, ...] = DEFAULT_CATEGORIES,
    n_train: int = 40,
    n_validation: int = 10,
    n_test: int = 10,
    size: tuple[int, int] = (512, 512),
    seed: int = 0,
    shift: float = 0.0,
    progress: bool = True,
) -> list[Path]:
    """Write a synthetic dataset in the Eyecandies layout under ``out``; return the category folders.

    Per category: ``n_train`` train and ``n_validation`` val good samples, and 2 * ``n_test`` test_public
    samples (``n_test`` good, ``n_test`` bad). ``size`` is (width, height) in pixels; ``shift`` the demo's
    line drift. InputError for an unknown category or a bad number."""
    names = list(dict.fromkeys(category_name(c) for c in categories))
    if not names:
        raise InputError(f"no categories given; valid choices: {', '.join(CATEGORIES)}")
    plan = {
        "train": _count("n_train", n_train, 1),
        "val": _count("n_validation", n_validation, 0),
        "test_public": 2 * _count("n_test", n_test, 1),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = len(names) * sum(plan.values())
    with tqdm(total=total, disable=not progress, unit="sample", desc="eyecandies demo data") as bar:
        return [_write_category(out, name, plan, size, seed, shift, bar) for name in names]


def generate_from_args(args: argparse.Namespace) -> list[Path]:
    """``make-demo-data OUT --layout eyecandies``: :func:`generate` with the command's options."""
    return generate(
        args.out,
        args.categories or DEFAULT_CATEGORIES,
        n_train=args.train,
        n_validation=args.validation,
        n_test=args.test,
        size=parse_size(args.size),
        seed=args.seed,
        shift=args.shift,
        progress=not args.quiet,
    )
