"""Deterministic synthetic data in the Real3D-AD layout: closed 360-degree surfaces sampled as unorganized
point clouds in millimetres, with bulge and sink defects labelled per point.

```
OUT/<category>/train/<i>_template.pcd     360-degree prototypes
OUT/<category>/test/<j>_good.pcd          good test clouds
OUT/<category>/test/<j>_bulge.pcd         defective test clouds (bulge, then sink)
OUT/<category>/gt/<j>_bulge.txt           "x y z label" per point of that cloud, in its order (label 0/1)
```

Categories are analytic closed surfaces of Real3D-AD's size (20-40 mm): ``capsule`` (a cylinder with two
hemispherical caps), ``superellipsoid`` (a rounded box, |x/a|^4 + |y/b|^4 + |z/c|^4 = 1) and ``torus`` (not
star-shaped from its centroid). Points are drawn uniformly over the surface area (exactly for the capsule; by
rejection on the area element for the others), then moved by Gaussian noise (``NOISE_MM``). A defect is a
smooth normal displacement ``+-h (1 - (d / rho)^2)^2`` within ``rho`` of a surface point (outwards: bulge,
inwards: sink; ``rho`` 1.5-3 mm, ``h`` 0.1-0.3 mm); its points are those displaced by more than
``LABEL_LEVEL`` of ``h``. Finally every cloud is posed: ``random``, a uniformly random rotation and a shift of
up to ``SHIFT_MM``; ``aligned``, as generated.

Every file depends only on (seed, category, split, kind, index, points, pose): the surface, noise, defect and
pose each draw from their own stream of ``SeedSequence([seed, category_id, split_id, kind_id, index])``, so the
aligned and the random-pose data of one seed hold the same clouds, defects and noise, rotated. Each category
is written next to its final place and swapped in whole.
"""

from __future__ import annotations

import argparse
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Final, Literal

import numpy as np
from tqdm import tqdm

from patchbank.errors import InputError
from patchbank_synthetic.demo_data import _check_positive, staged_folder

Pose = Literal["random", "aligned"]
POSES: Final = ("random", "aligned")
GOOD: Final = "good"
DEFECT_KINDS: Final = ("bulge", "sink")
KINDS: Final = (GOOD, *DEFECT_KINDS)
SPLITS: Final = ("train", "test")
DEFAULT_CATEGORIES: Final = ("capsule", "superellipsoid")
DEFAULT_PROTOTYPES: Final = 4  # Real3D-AD's training set: 4 prototypes per category
DEFAULT_TEST: Final = 10  # test clouds per kind
DEFAULT_POINTS: Final = 20_000  # points of every cloud
IMAGE_TRAIN_DEFAULT: Final = 40  # make-demo-data's --train default, meant for images: not a prototype count
NOISE_MM: Final = 0.02  # scanner noise, standard deviation per coordinate
SHIFT_MM: Final = 20.0  # a random pose moves the cloud up to this far along each axis
DEFECT_RADIUS_MM: Final = (1.5, 3.0)
DEFECT_HEIGHT_MM: Final = (0.1, 0.3)
LABEL_LEVEL: Final = 0.1  # a point is anomalous where its displacement exceeds this share of the height
_STREAMS: Final = 4  # surface, noise, defect, pose
_REJECTION_BATCH: Final = 4096


class Shape(ABC):
    """A closed surface in millimetres, centred on the origin; ``cat_id`` is fixed (used in the seeds)."""

    name: str
    cat_id: int

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3) points uniform over the surface area and their (n, 3) unit outward normals, float64."""


Draw = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _by_rejection(
    rng: np.random.Generator, n: int, draw: Draw, weight_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` candidates of ``draw(rng, m) -> (points, normals, weights)`` kept with probability weight /
    ``weight_max``: uniform over the surface when a candidate's weight is its area element."""
    points, normals, have = [], [], 0
    while have < n:
        p, nrm, w = draw(rng, _REJECTION_BATCH)
        keep = rng.random(len(w)) * weight_max < w
        points.append(p[keep])
        normals.append(nrm[keep])
        have += int(keep.sum())
    return np.concatenate(points)[:n], np.concatenate(normals)[:n]


class Capsule(Shape):
    """A cylinder of radius ``RADIUS`` and length 2 ``HALF_LENGTH`` along z, closed by two hemispheres."""

    name, cat_id = "capsule", 0
    RADIUS, HALF_LENGTH = 6.0, 10.0

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        r, h = self.RADIUS, self.HALF_LENGTH
        side = 2 * math.pi * r * 2 * h
        on_side = rng.random(n) < side / (side + 4 * math.pi * r * r)
        theta = rng.uniform(0, 2 * math.pi, n)
        radial = np.stack([np.cos(theta), np.sin(theta), np.zeros(n)], axis=1)
        sphere = rng.normal(size=(n, 3))
        sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
        normals = np.where(on_side[:, None], radial, sphere)
        axis = np.where(on_side, rng.uniform(-h, h, n), np.sign(sphere[:, 2]) * h)
        points = r * normals + np.stack([np.zeros(n), np.zeros(n), axis], axis=1)
        return points, normals


class Superellipsoid(Shape):
    """|x/a|^4 + |y/b|^4 + |z/c|^4 = 1: a box with rounded edges and corners, star-shaped from its centre."""

    name, cat_id = "superellipsoid", 1
    AXES = np.array([14.0, 10.0, 7.0])
    POWER = 4

    def _draw(self, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = rng.normal(size=(m, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)  # uniform directions
        q = self.POWER
        radius = (np.abs(d / self.AXES) ** q).sum(axis=1) ** (-1 / q)
        p = radius[:, None] * d
        grad = np.sign(p) * np.abs(p) ** (q - 1) / self.AXES**q
        normal = grad / np.linalg.norm(grad, axis=1, keepdims=True)
        # area per solid angle of a star-shaped surface: r^2 / cos(angle between direction and normal)
        return p, normal, radius**2 / (d * normal).sum(axis=1)

    @cached_property
    def _bound(self) -> float:
        """Above every area element: a large batch's largest, with a margin (the surface is convex, so the
        element r^2 / cos is bounded)."""
        return 1.5 * float(self._draw(np.random.default_rng(0), 100_000)[2].max())

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return _by_rejection(rng, n, self._draw, self._bound)


class Torus(Shape):
    """A ring of tube radius ``TUBE`` around a circle of radius ``RING`` in the xy plane."""

    name, cat_id = "torus", 2
    RING, TUBE = 11.0, 4.5

    def _draw(self, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        theta, phi = rng.uniform(0, 2 * math.pi, (2, m))
        normal = np.stack([np.cos(phi) * np.cos(theta), np.cos(phi) * np.sin(theta), np.sin(phi)], axis=1)
        centre = self.RING * np.stack([np.cos(theta), np.sin(theta), np.zeros(m)], axis=1)
        return centre + self.TUBE * normal, normal, self.RING + self.TUBE * np.cos(phi)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return _by_rejection(rng, n, self._draw, self.RING + self.TUBE)


SHAPES: Final[dict[str, Shape]] = {s.name: s for s in (Capsule(), Superellipsoid(), Torus())}


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3 x 3 rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def make_cloud(
    shape: Shape, kind: str, split: str, index: int, points: int, seed: int, pose: Pose
) -> tuple[np.ndarray, np.ndarray]:
    """One cloud: (N, 3) float32 points in millimetres and (N,) bool labels (True = anomalous)."""
    entropy = [seed, shape.cat_id, SPLITS.index(split), KINDS.index(kind), index]
    surface, noise, defect, posing = (
        np.random.default_rng(s) for s in np.random.SeedSequence(entropy).spawn(_STREAMS)
    )
    xyz, normals = shape.sample(surface, points)
    labels = np.zeros(points, dtype=bool)
    if kind != GOOD:
        centre = shape.sample(defect, 1)[0][0]
        rho, height = defect.uniform(*DEFECT_RADIUS_MM), defect.uniform(*DEFECT_HEIGHT_MM)
        q = np.clip(1 - (np.linalg.norm(xyz - centre, axis=1) / rho) ** 2, 0, None) ** 2
        sign = 1.0 if kind == "bulge" else -1.0
        xyz = xyz + (sign * height * q)[:, None] * normals
        labels = q > LABEL_LEVEL
    xyz = xyz + noise.normal(scale=NOISE_MM, size=xyz.shape)
    if pose == "random":
        xyz = xyz @ _rotation(posing).T + posing.uniform(-SHIFT_MM, SHIFT_MM, 3)
    return xyz.astype(np.float32), labels


def write_pcd(path: Path, xyz: np.ndarray) -> None:
    """An unorganized binary PCD of (N, 3) float32 points."""
    from pypcd4 import Encoding, PointCloud

    PointCloud.from_xyz_points(np.ascontiguousarray(xyz, dtype=np.float32)).save(path, Encoding.BINARY)


def write_labels(path: Path, xyz: np.ndarray, labels: np.ndarray) -> None:
    """Real3D-AD's label file: "x y z label" per point (float32 coordinates written exactly, label 0/1)."""
    table = np.column_stack([xyz.astype(np.float64), labels.astype(np.float64)])
    np.savetxt(path, table, fmt=["%.9g", "%.9g", "%.9g", "%d"], delimiter=" ")


def _plan(n_prototypes: int, n_test: int) -> list[tuple[str, str, int, str]]:
    """(split, kind, index within the kind, file stem) of every cloud of a category."""
    plan = [("train", GOOD, i, f"{i}_template") for i in range(n_prototypes)]
    for k, kind in enumerate(KINDS):
        plan += [("test", kind, i, f"{k * n_test + i}_{kind}") for i in range(n_test)]
    return plan


def _write_category(
    out: Path,
    shape: Shape,
    plan: list[tuple[str, str, int, str]],
    points: int,
    seed: int,
    pose: Pose,
    bar: tqdm,
) -> Path:
    with staged_folder(out / shape.name) as staged:
        for sub in ("train", "test", "gt"):
            (staged / sub).mkdir(parents=True)
        for split, kind, index, stem in plan:
            xyz, labels = make_cloud(shape, kind, split, index, points, seed, pose)
            write_pcd(staged / split / f"{stem}.pcd", xyz)
            if kind != GOOD:
                write_labels(staged / "gt" / f"{stem}.txt", xyz, labels)
            bar.update(1)
    return out / shape.name


def generate(
    out: Path,
    categories: Sequence[str] | None = None,
    n_prototypes: int = DEFAULT_PROTOTYPES,
    n_test: int = DEFAULT_TEST,
    points: int = DEFAULT_POINTS,
    seed: int = 0,
    pose: Pose = "random",
    progress: bool = True,
) -> list[Path]:
    """Write a synthetic Real3D-AD dataset under ``out`` and return the category folders written.

    Per category: ``n_prototypes`` training prototypes and ``n_test`` test clouds of each kind (good, bulge,
    sink), every cloud of ``points`` points. ``categories`` default to :data:`DEFAULT_CATEGORIES`
    (known: :data:`SHAPES`). InputError for an unknown category or pose, or a count that is not positive.
    """
    names = list(categories or DEFAULT_CATEGORIES)
    unknown = [c for c in names if c not in SHAPES]
    if unknown:
        raise InputError(f"unknown real3d categories {unknown}; known: {', '.join(SHAPES)}")
    if pose not in POSES:
        raise InputError(f"pose must be one of {', '.join(POSES)}, got {pose!r}")
    n_prototypes = _check_positive("n_prototypes", n_prototypes)
    plan = _plan(n_prototypes, _check_positive("n_test", n_test))
    points = _check_positive("points", points, 100)
    seed = _check_positive("seed", seed, 0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(names) * len(plan), disable=not progress, unit="cloud", desc="real3d data") as bar:
        return [_write_category(out, SHAPES[c], plan, points, seed, pose, bar) for c in names]


def generate_from_args(args: argparse.Namespace) -> list[Path]:
    """``make-demo-data OUT --layout real3d``: ``--train`` is the prototype count only when set to something
    other than its image default (40), ``--test`` the clouds per kind, ``--points`` every cloud's points;
    ``--validation`` does not apply (Real3D-AD has no validation split)."""
    train = getattr(args, "train", None)
    return generate(
        args.out,
        args.categories,
        n_prototypes=DEFAULT_PROTOTYPES if train in (None, IMAGE_TRAIN_DEFAULT) else train,
        n_test=args.test,
        points=getattr(args, "points", None) or DEFAULT_POINTS,
        seed=args.seed,
        progress=not args.quiet,
    )
