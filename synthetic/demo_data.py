"""Deterministic procedural generator of synthetic inspection data in the MVTec 3D-AD layout.

The scene: a pinhole camera about 0.5 m above a table (tilted by a few degrees) looks down at a 2.5D object,
i.e. a height field ``h(u, v)`` in metres standing on the table plane. Every pixel's ray is intersected with
table + height field by fixed-point iteration, which gives an organized point cloud in the camera frame
(metres; X right, Y down, Z along the optical axis) and, per pixel, the surface point hit. RGB is albedo times
a deliberately weak shading (ambient 0.75 + a small Lambertian term from normals of the depth gradients), so
geometry is only faintly visible in colour. The xyz cloud gets structured-light sensor effects: Gaussian depth
noise and dropouts (exactly (0, 0, 0)) as random speckles, at steep slopes and occlusion edges, and in a band
along the left image border.

Defects are analytic changes of the height field and/or the albedo in object coordinates, so a sample can be
rendered with and without its defect under identical nuisance (pose, light, texture, sensor noise): ``hole``
and ``crack`` change geometry only, ``stain`` changes colour only, ``bump`` both, and ``cut`` removes material
at the object's edge (the table shows through).

Frames: *table* frame (x, y on the table plane, z up, metres) with the camera centre at (0, 0, D); *object*
frame (u, v) = table frame translated and rotated by the object's pose. Every sample's random streams come
from ``SeedSequence([seed, category_id, split_id, kind_id, index])``, so a file depends only on those values,
the image size and ``shift``, never on how many samples are generated or in which order.

Line drift (``shift`` in [0, 1], default 0) models a new batch of material on an unchanged line. It acts in
one place, :func:`_drift`, on the object albedo only and before any defect, so a stain is still a stain on
the new material: a per-channel tint ``1 + shift * (BATCH_TINT - 1)`` (at 1: red x0.80, green x0.96, blue
x1.18, so the beige puck turns sage grey and the aluminium bracket blue-grey) times stronger mottling
``1 + shift * (BATCH_MOTTLE[0] * low + BATCH_MOTTLE[1] * fine)`` from the object's own 6 mm and 0.8 mm noise
fields (at 1 about 2.5x the puck's texture contrast). Geometry, table, light, sensor noise and defects never
depend on ``shift``: xyz and gt files are identical for every shift, and ``shift = 0`` renders exactly what
the generator wrote before the option existed.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import tifffile
from PIL import Image
from tqdm import tqdm

from patchbank.camera_parameters import CALIBRATION_FILE, CameraParameters
from patchbank.errors import InputError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
UInt8Array = npt.NDArray[np.uint8]
Rng = np.random.Generator

DEFAULT_CATEGORIES: Final[tuple[str, ...]] = ("puck", "bracket")
DEFECT_KINDS: Final[tuple[str, ...]] = ("hole", "bump", "crack", "cut", "stain")
GOOD: Final = "good"
SAMPLE_KINDS: Final[tuple[str, ...]] = (GOOD, *DEFECT_KINDS)
SPLITS: Final[tuple[str, ...]] = ("train", "validation", "test")
# gt value of a defect pixel per kind (MVTec 3D-AD encodes the defect class as 253..255; five kinds share 3).
GT_VALUES: Final[dict[str, int]] = {"hole": 255, "bump": 254, "crack": 253, "cut": 255, "stain": 254}
MIN_SIDE: Final = 32  # pixels; below this a defect would cover no pixel

MM: Final = 1e-3
TABLE_DISTANCE = 0.50  # m, nominal camera-to-table distance
DISTANCE_JITTER = 0.01  # m, per-sample +- change of that distance
FIELD_OF_VIEW = 0.25  # m of table covered by the shorter image side at the nominal distance
MAX_TILT_DEG = 3.0  # per-axis camera tilt
POSE_SHIFT = 4 * MM  # +- object translation
POSE_ROTATION_DEG = 10.0  # +- in-plane object rotation
TRACE_ITERATIONS = 12
TRACE_TOLERANCE = 1e-5  # m; a ray whose depth still moves more than this is an occlusion (dropout)
TRACE_MARGIN = 15 * MM  # table hits this far outside the footprint are traced against the object too
AMBIENT = 0.75
DIFFUSE = 0.25
TABLE_RGB = (0.30, 0.31, 0.33)
DEFECT_TRIES = 8
FLAT_TOLERANCE = 2.5 * MM  # max intact height range under a defect
_STREAM_COUNT = 4  # pose, texture, sensor, defect
SENSOR_PITCH = 2.0**-18  # m, pixel size written to camera_parameters.json (a power of 2: focus / sx is exact)
# line drift at shift = 1 (see _drift): per-channel albedo gain, extra (low, fine) mottling amplitude
BATCH_TINT: Final = (0.80, 0.96, 1.18)
BATCH_MOTTLE: Final = (0.08, 0.05)


@dataclass(frozen=True)
class DemoSample:
    """One rendered sample: rgb (H, W, 3) uint8; xyz (H, W, 3) float32 metres, camera frame, (0, 0, 0) =
    missing; gt (H, W) uint8, 0 = good, ``GT_VALUES[kind]`` on defect pixels; height (H, W) float64 metres,
    the true height above the table of the surface each pixel sees (0 on the table; before sensor noise,
    and only an estimate where the sensor reports nothing at occlusion edges; not written to disk: the
    generator's own answer to which points are background)."""

    rgb: UInt8Array
    xyz: npt.NDArray[np.float32]
    gt: UInt8Array
    height: FloatArray


# --------------------------------------------------------------------------------------------- small maths


def _smoothstep(edge0: float, edge1: float, x: FloatArray) -> FloatArray:
    """Hermite step: 0 at ``edge0``, 1 at ``edge1`` (either order), C1-smooth in between."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _bowl(rho: FloatArray) -> FloatArray:
    """Compact smooth profile (1 - rho^2)^2 for rho < 1, else 0; 1 at the centre, flat at both ends."""
    q = np.clip(1.0 - rho * rho, 0.0, None)
    return q * q


def _mix(a: FloatArray, b: FloatArray | Sequence[float], w: FloatArray) -> FloatArray:
    """Row-wise blend of colours: a (N, 3), b (N, 3) or (3,), weight w (N,) in [0, 1] -> (N, 3)."""
    return a + (np.asarray(b, dtype=np.float64) - a) * w[:, None]


def _segment_distance(
    u: FloatArray, v: FloatArray, p0: tuple[float, float], p1: tuple[float, float]
) -> tuple[FloatArray, FloatArray]:
    """Distance (m) of points (N,) to the segment p0-p1 and the clamped position along it in [0, 1]."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    s = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / max(du * du + dv * dv, 1e-18), 0.0, 1.0)
    return np.hypot(u - p0[0] - s * du, v - p0[1] - s * dv), s


def _rotation(axis: int, angle: float) -> FloatArray:
    """3 x 3 rotation by ``angle`` radians about coordinate axis 0, 1 or 2."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


@dataclass(frozen=True)
class _Noise:
    """Bilinear value noise: uniform [-1, 1] values on a grid of ``cell`` (du, dv) metres covering
    [-half, half] in u and v (outside it the border value repeats). Evaluates (N,) points -> (N,)."""

    grid: FloatArray  # (nv, nu)
    cell: tuple[float, float]
    half: float

    @classmethod
    def draw(cls, rng: Rng, half: float, cell: tuple[float, float]) -> _Noise:
        """A fresh random grid covering a square of side 2 * ``half`` metres."""
        shape = (math.ceil(2 * half / cell[1]) + 2, math.ceil(2 * half / cell[0]) + 2)
        return cls(rng.uniform(-1.0, 1.0, size=shape), cell, half)

    def __call__(self, u: FloatArray, v: FloatArray) -> FloatArray:
        nv, nu = self.grid.shape
        fu = np.clip((u + self.half) / self.cell[0], 0.0, nu - 1.000001)
        fv = np.clip((v + self.half) / self.cell[1], 0.0, nv - 1.000001)
        iu, iv = fu.astype(np.intp), fv.astype(np.intp)
        wu, wv = fu - iu, fv - iv
        flat, base = self.grid.ravel(), iv * nu + iu
        top = flat[base] + (flat[base + 1] - flat[base]) * wu
        bottom = flat[base + nu] + (flat[base + nu + 1] - flat[base + nu]) * wu
        return top + (bottom - top) * wv


@dataclass(frozen=True)
class _Textures:
    """Per-sample noise fields: object frame (low: 6 mm blobs, fine: 0.8 mm grain, streak: brushed metal
    along u) and table frame (table_low: 25 mm, table_fine: 1 mm)."""

    low: _Noise
    fine: _Noise
    streak: _Noise
    table_low: _Noise
    table_fine: _Noise

    @classmethod
    def draw(cls, rng: Rng, table_half: float) -> _Textures:
        """Fresh fields; ``table_half`` (m) is the half extent of the table area the camera can see."""
        return cls(
            low=_Noise.draw(rng, 0.09, (6 * MM, 6 * MM)),
            fine=_Noise.draw(rng, 0.09, (0.8 * MM, 0.8 * MM)),
            streak=_Noise.draw(rng, 0.09, (20 * MM, 0.35 * MM)),
            table_low=_Noise.draw(rng, table_half, (25 * MM, 25 * MM)),
            table_fine=_Noise.draw(rng, table_half, (1 * MM, 1 * MM)),
        )

    def table_albedo(self, x: FloatArray, y: FloatArray) -> FloatArray:
        """Table colour (N, 3) in [0, 1] at table points (N,) metres: grey with mild mottling and grain."""
        shade = 1.0 + 0.05 * self.table_low(x, y) + 0.04 * self.table_fine(x, y)
        return np.asarray(TABLE_RGB)[None, :] * shade[:, None]


# --------------------------------------------------------------------------------------------- categories


class _Category(ABC):
    """An object type: footprint, height field and albedo, all in object coordinates (metres)."""

    name: str
    cat_id: int  # fixed id used in seeds; never reuse one
    bound: float  # m, radius around the origin that contains the whole footprint

    @abstractmethod
    def sdf(self, u: FloatArray, v: FloatArray) -> FloatArray:
        """Signed distance (m) to the footprint outline, negative inside; (N,) -> (N,)."""

    @abstractmethod
    def height(self, u: FloatArray, v: FloatArray) -> FloatArray:
        """Height above the table (m), 0 outside the footprint; (N,) -> (N,)."""

    @abstractmethod
    def albedo(self, u: FloatArray, v: FloatArray, tex: _Textures) -> FloatArray:
        """Surface colour (N, 3) in [0, 1] at object points (N,)."""


class _Puck(_Category):
    """A rounded disc 100 mm across and 8 mm thick, slightly domed, with a raised rim and a central grey boss;
    beige with a printed blue ring and four tick marks (so its rotation is visible)."""

    name = "puck"
    cat_id = 0
    radius = 50 * MM
    bound = 50 * MM
    boss_radius = 14 * MM

    def sdf(self, u: FloatArray, v: FloatArray) -> FloatArray:
        return np.hypot(u, v) - self.radius

    def height(self, u: FloatArray, v: FloatArray) -> FloatArray:
        r = np.hypot(u, v)
        body = _smoothstep(self.radius, self.radius - 4 * MM, r) * (
            8 * MM + 1 * MM * (1 - (r / self.radius) ** 2)
        )
        rim = 3 * MM * 0.5 * (1 + np.cos(np.pi * np.clip(np.abs(r - 40.5 * MM) / (3.5 * MM), 0.0, 1.0)))
        boss = 6 * MM * _smoothstep(self.boss_radius, self.boss_radius - 3 * MM, r)
        return body + rim + boss

    def albedo(self, u: FloatArray, v: FloatArray, tex: _Textures) -> FloatArray:
        r = np.hypot(u, v)
        col = np.broadcast_to(np.array([0.80, 0.68, 0.50]), (u.size, 3))
        col = _mix(col, (0.58, 0.58, 0.61), _smoothstep(self.boss_radius, self.boss_radius - 0.8 * MM, r))
        ring = _smoothstep(0.9 * MM, 0.5 * MM, np.abs(r - 29 * MM))
        band = _smoothstep(16.5 * MM, 17.5 * MM, r) * _smoothstep(25.5 * MM, 24.5 * MM, r)
        ticks = band * _smoothstep(0.8 * MM, 0.4 * MM, np.minimum(np.abs(u), np.abs(v)))
        col = _mix(col, (0.16, 0.20, 0.42), 0.9 * np.maximum(ring, ticks))
        grain = 1.0 + 0.05 * tex.low(u, v) + 0.035 * tex.fine(u, v)
        return col * grain[:, None]


class _Bracket(_Category):
    """A 128 x 76 mm rounded rectangular plate, 6 mm thick with 3 mm chamfered edges, two raised ribs along
    its length and two bolt bosses with blind bores; brushed aluminium with darker steel bosses."""

    name = "bracket"
    cat_id = 1
    half = (64 * MM, 38 * MM)
    corner = 8 * MM
    bound = math.hypot(64 * MM, 38 * MM)
    ribs = (((-38 * MM, 21 * MM), (38 * MM, 21 * MM)), ((-38 * MM, -21 * MM), (38 * MM, -21 * MM)))
    bosses = ((-52 * MM, 0.0), (52 * MM, 0.0))
    boss_radius = 7 * MM
    bore_radius = 2.2 * MM

    def sdf(self, u: FloatArray, v: FloatArray) -> FloatArray:
        qu = np.abs(u) - (self.half[0] - self.corner)
        qv = np.abs(v) - (self.half[1] - self.corner)
        outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
        return outside + np.minimum(np.maximum(qu, qv), 0.0) - self.corner

    def _boss_distance(self, u: FloatArray, v: FloatArray) -> FloatArray:
        """Distance (m) to the nearer boss centre."""
        return np.minimum(*(np.hypot(u - bu, v - bv) for bu, bv in self.bosses))

    def height(self, u: FloatArray, v: FloatArray) -> FloatArray:
        h = 6 * MM * _smoothstep(0.0, -3 * MM, self.sdf(u, v))
        for p0, p1 in self.ribs:
            d, _ = _segment_distance(u, v, p0, p1)
            h = h + 5 * MM * _smoothstep(3.5 * MM, 1.5 * MM, d)
        db = self._boss_distance(u, v)
        h = h + 5 * MM * _smoothstep(self.boss_radius, self.boss_radius - 1.5 * MM, db)
        bore = _smoothstep(self.bore_radius, self.bore_radius - 0.4 * MM, db)
        return h * (1 - bore) + 1 * MM * bore

    def albedo(self, u: FloatArray, v: FloatArray, tex: _Textures) -> FloatArray:
        grain = 1.0 + 0.06 * tex.streak(u, v) + 0.03 * tex.low(u, v) + 0.025 * tex.fine(u, v)
        col = np.array([0.66, 0.68, 0.72])[None, :] * grain[:, None]
        db = self._boss_distance(u, v)
        col = _mix(col, (0.40, 0.41, 0.44), _smoothstep(self.boss_radius, self.boss_radius - 0.8 * MM, db))
        return _mix(col, (0.10, 0.10, 0.11), _smoothstep(self.bore_radius, self.bore_radius - 0.4 * MM, db))


CATEGORIES: Final[dict[str, _Category]] = {c.name: c for c in (_Puck(), _Bracket())}


def _interior_point(cat: _Category, rng: Rng, margin: float, probe: float = 0.0) -> tuple[float, float]:
    """A random object point (m) at least ``margin`` metres inside the footprint where the intact height
    varies by less than ``FLAT_TOLERANCE`` within ``probe`` metres (so defects avoid steep walls); falls
    back to any interior point, then to the centre."""
    ring = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    offsets = np.concatenate([[[0.0, 0.0]], probe * np.stack([np.cos(ring), np.sin(ring)], axis=1)])
    fallback: tuple[float, float] | None = None
    for _ in range(16):
        cand = rng.uniform(-cat.bound, cat.bound, size=(64, 2))
        inside = cat.sdf(cand[:, 0], cand[:, 1]) < -margin
        probes = cand[:, None, :] + offsets[None, :, :]
        h = cat.height(probes[..., 0].ravel(), probes[..., 1].ravel()).reshape(probes.shape[:2])
        good = inside & (np.ptp(h, axis=1) < FLAT_TOLERANCE)
        if good.any():
            u, v = cand[int(np.argmax(good))]
            return float(u), float(v)
        if fallback is None and inside.any():
            u, v = cand[int(np.argmax(inside))]
            fallback = (float(u), float(v))
    return fallback if fallback is not None else (0.0, 0.0)


def _boundary_point(cat: _Category, angle: float) -> tuple[FloatArray, FloatArray]:
    """Where the ray from the origin at ``angle`` leaves the (star-shaped) footprint, and the outward unit
    normal there; both (2,) metres / unitless."""
    direction = np.array([math.cos(angle), math.sin(angle)])
    lo, hi = 0.0, 1.5 * cat.bound
    for _ in range(48):
        mid = 0.5 * (lo + hi)
        p = direction * mid
        if cat.sdf(p[:1], p[1:])[0] < 0:
            lo = mid
        else:
            hi = mid
    p, eps = direction * lo, 1e-5
    grad = np.array(
        [
            cat.sdf(p[:1] + eps, p[1:])[0] - cat.sdf(p[:1] - eps, p[1:])[0],
            cat.sdf(p[:1], p[1:] + eps)[0] - cat.sdf(p[:1], p[1:] - eps)[0],
        ]
    )
    return p, grad / max(float(np.linalg.norm(grad)), 1e-12)


# --------------------------------------------------------------------------------------------- defects


@dataclass(frozen=True)
class _Defect(ABC):
    """A local change of the object, in object coordinates; ``reach`` (m) bounds its support around
    ``centre`` so the (N,) evaluations only touch nearby points."""

    kind: str
    centre: tuple[float, float]
    reach: float

    def _near(self, u: FloatArray, v: FloatArray) -> BoolArray:
        return (np.abs(u - self.centre[0]) < self.reach) & (np.abs(v - self.centre[1]) < self.reach)

    def height(self, u: FloatArray, v: FloatArray, h: FloatArray) -> FloatArray:
        """The defective height (N,) m given the intact height h (N,) at object points (N,)."""
        return h

    def albedo(self, u: FloatArray, v: FloatArray, rgb: FloatArray) -> FloatArray:
        """The defective colour (N, 3) given the intact colour at object points (N,)."""
        return rgb

    def presence(self, u: FloatArray, v: FloatArray) -> FloatArray:
        """1 where the object material is still there, 0 where the defect removed it; (N,) -> (N,)."""
        return np.ones_like(u)

    @abstractmethod
    def mask(self, u: FloatArray, v: FloatArray) -> BoolArray:
        """True on defect pixels; (N,) object points -> (N,) bool."""


@dataclass(frozen=True)
class _Blob(_Defect):
    """An elliptical (optionally lobed) patch: height change ``dz`` (m, signed) with a smooth bowl profile
    and/or colour multiplied towards ``tint`` with strength ``alpha``. Used by hole, bump and stain."""

    axes: tuple[float, float]
    angle: float
    lobes: tuple[tuple[float, float], ...]  # (amplitude, phase) of harmonics 2, 3, 5 of the outline
    dz: float
    tint: tuple[float, float, float]
    alpha: float
    mask_rho: float

    def _rho(self, u: FloatArray, v: FloatArray) -> FloatArray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        du, dv = u - self.centre[0], v - self.centre[1]
        a = (c * du + s * dv) / self.axes[0]
        b = (-s * du + c * dv) / self.axes[1]
        theta = np.arctan2(b, a)
        wobble = 1.0 + sum(
            amp * np.cos(k * theta + ph) for k, (amp, ph) in zip((2, 3, 5), self.lobes, strict=True)
        )
        return np.hypot(a, b) / wobble

    def height(self, u: FloatArray, v: FloatArray, h: FloatArray) -> FloatArray:
        if self.dz == 0.0:
            return h
        near = self._near(u, v)
        out = h.copy()
        out[near] += self.dz * _bowl(self._rho(u[near], v[near]))
        return out

    def albedo(self, u: FloatArray, v: FloatArray, rgb: FloatArray) -> FloatArray:
        if self.alpha == 0.0:
            return rgb
        near = self._near(u, v)
        rho = self._rho(u[near], v[near])
        weight = (
            _smoothstep(1.0, 0.75, rho) * (0.8 + 0.2 * _bowl(rho)) if self.kind == "stain" else _bowl(rho)
        )
        out = rgb.copy()
        out[near] = rgb[near] * _mix(np.ones((rho.size, 3)), self.tint, self.alpha * weight)
        return out

    def mask(self, u: FloatArray, v: FloatArray) -> BoolArray:
        near = self._near(u, v)
        out = np.zeros(u.shape, dtype=bool)
        out[near] = self._rho(u[near], v[near]) < self.mask_rho
        return out


@dataclass(frozen=True)
class _Crack(_Defect):
    """A thin groove along a polyline: depth ``depth`` (m) with a rounded cross-section of half width
    ``half_width`` (m), tapering to nothing over the last 15 % at both ends."""

    points: tuple[tuple[float, float], ...]
    half_width: float
    depth: float

    def _distance(self, u: FloatArray, v: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Distance (m) to the polyline and the relative arc position (0..1) of the nearest point."""
        lengths = [math.dist(p0, p1) for p0, p1 in zip(self.points[:-1], self.points[1:], strict=True)]
        starts = np.concatenate([[0.0], np.cumsum(lengths)])
        best = np.full(u.shape, np.inf)
        pos = np.zeros(u.shape)
        for i, (p0, p1) in enumerate(zip(self.points[:-1], self.points[1:], strict=True)):
            d, s = _segment_distance(u, v, p0, p1)
            closer = d < best
            best = np.where(closer, d, best)
            pos = np.where(closer, starts[i] + s * lengths[i], pos)
        return best, pos / starts[-1]

    def height(self, u: FloatArray, v: FloatArray, h: FloatArray) -> FloatArray:
        near = self._near(u, v)
        d, s = self._distance(u[near], v[near])
        taper = _smoothstep(0.0, 0.15, s) * _smoothstep(1.0, 0.85, s)
        out = h.copy()
        out[near] -= self.depth * taper * _bowl(d / self.half_width)
        return out

    def mask(self, u: FloatArray, v: FloatArray) -> BoolArray:
        near = self._near(u, v)
        d, s = self._distance(u[near], v[near])
        out = np.zeros(u.shape, dtype=bool)
        out[near] = (d < self.half_width) & (s > 0.05) & (s < 0.95)
        return out


@dataclass(frozen=True)
class _Cut(_Defect):
    """Material missing inside a disc of ``radius`` (m) centred just outside the outline: height falls to
    the table over ``soft`` (m) and the table shows through."""

    radius: float
    soft: float

    def presence(self, u: FloatArray, v: FloatArray) -> FloatArray:
        out = np.ones_like(u)
        near = self._near(u, v)
        d = np.hypot(u[near] - self.centre[0], v[near] - self.centre[1])
        out[near] = _smoothstep(self.radius - self.soft, self.radius, d)
        return out

    def height(self, u: FloatArray, v: FloatArray, h: FloatArray) -> FloatArray:
        return h * self.presence(u, v)

    def mask(self, u: FloatArray, v: FloatArray) -> BoolArray:
        return np.hypot(u - self.centre[0], v - self.centre[1]) < self.radius - 0.5 * self.soft


def _draw_blob(kind: str, cat: _Category, rng: Rng, pixel: float) -> _Blob:
    """Hole (1-3 mm deep), bump (2-4 mm high, slightly darker) or stain (brown, colour only); 6-15 mm
    across, never smaller than 4 pixels (``pixel`` = footprint of one pixel, m)."""
    a = max(rng.uniform(3 * MM, 7.5 * MM), 2 * pixel)
    b = a * rng.uniform(0.6 if kind == "stain" else 0.7, 1.0)
    angle = rng.uniform(0, math.pi)
    lobes = tuple((float(rng.uniform(0.0, 0.12)), float(rng.uniform(0, 2 * math.pi))) for _ in range(3))
    if kind == "hole":
        dz, tint, alpha, mask_rho = -min(rng.uniform(1 * MM, 3 * MM), 0.45 * b), (1.0, 1.0, 1.0), 0.0, 0.88
    elif kind == "bump":
        dz, tint, alpha, mask_rho = min(rng.uniform(2 * MM, 4 * MM), 0.6 * b), (0.88, 0.86, 0.84), 1.0, 0.88
    else:
        scale = rng.uniform(0.85, 1.15)
        dz, tint, alpha, mask_rho = (
            0.0,
            (0.50 * scale, 0.36 * scale, 0.22 * scale),
            rng.uniform(0.6, 0.8),
            0.9,
        )
    if kind != "stain":
        lobes = ((0.0, 0.0),) * 3
    centre = _interior_point(cat, rng, 1.3 * a + 2 * MM, a)
    return _Blob(kind, centre, 1.3 * a, (a, b), angle, lobes, dz, tint, alpha, mask_rho)


def _draw_crack(cat: _Category, rng: Rng, pixel: float) -> _Crack:
    """A 8-15 mm long, 1-2 mm wide, 1-2 mm deep crack of 3-4 kinked segments (width >= 1.2 pixels)."""
    length = max(rng.uniform(8 * MM, 15 * MM), 6 * pixel)
    half_width = max(rng.uniform(0.5 * MM, 1.0 * MM), 0.6 * pixel)
    depth = rng.uniform(1 * MM, 2 * MM)
    n_seg = int(rng.integers(3, 5))
    headings = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.uniform(-0.5, 0.5, size=n_seg))
    steps = (length / n_seg) * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    path = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    path -= path.mean(axis=0)
    for _ in range(32):
        centre = _interior_point(cat, rng, 0.5 * length + 2 * MM, 0.5 * length)
        pts = path + np.asarray(centre)
        if (cat.sdf(pts[:, 0], pts[:, 1]) < -2 * MM).all():
            break
    points = tuple((float(p[0]), float(p[1])) for p in pts)
    reach = float(np.abs(pts - np.asarray(centre)).max()) + half_width + 1e-4
    return _Crack("crack", centre, reach, points, half_width, depth)


def _draw_cut(cat: _Category, rng: Rng, pixel: float) -> _Cut:
    """A chip out of the object's edge: a disc of radius 4-8 mm (>= 2.5 pixels) centred at most a quarter
    radius outside (or a tenth inside) the outline, so 3-9 mm of material is missing."""
    radius = max(rng.uniform(4 * MM, 8 * MM), 2.5 * pixel)
    edge, normal = _boundary_point(cat, rng.uniform(0, 2 * math.pi))
    centre = edge + normal * radius * rng.uniform(-0.1, 0.25)
    soft = max(0.4 * MM, 0.5 * pixel)
    return _Cut("cut", (float(centre[0]), float(centre[1])), radius + soft, radius, soft)


def _draw_defect(kind: str, cat: _Category, rng: Rng, pixel: float) -> _Defect:
    """A random defect of ``kind`` on ``cat``; ``pixel`` (m) is one pixel's footprint on the table."""
    if kind == "crack":
        return _draw_crack(cat, rng, pixel)
    if kind == "cut":
        return _draw_cut(cat, rng, pixel)
    return _draw_blob(kind, cat, rng, pixel)


# --------------------------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera: ``width`` x ``height`` pixels, focal length ``focal`` (pixels), principal point at the
    image centre, centre at height ``distance`` (m) above the table, ``to_table`` (3, 3) rotates camera-frame
    directions into the table frame (looking down, tilted by a few degrees)."""

    width: int
    height: int
    focal: float
    distance: float
    to_table: FloatArray

    @classmethod
    def draw(cls, rng: Rng, size: tuple[int, int]) -> _Camera:
        """Fixed intrinsics for the image size; random distance (0.49-0.51 m) and tilt (<= 3 deg per axis)."""
        width, height = size
        focal = cls.focal_for(size)
        distance = TABLE_DISTANCE + rng.uniform(-DISTANCE_JITTER, DISTANCE_JITTER)
        tilt_x, tilt_y = np.radians(rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG, size=2))
        down = np.diag([1.0, -1.0, -1.0])  # camera X -> table x, Y (image down) -> -y, Z (forward) -> -z
        return cls(width, height, focal, distance, _rotation(0, tilt_x) @ _rotation(1, tilt_y) @ down)

    @staticmethod
    def focal_for(size: tuple[int, int]) -> float:
        """Focal length (pixels) for an image of ``size`` (width, height): the shorter side sees
        FIELD_OF_VIEW metres of table at the nominal distance."""
        return min(size) * TABLE_DISTANCE / FIELD_OF_VIEW

    @property
    def pixel(self) -> float:
        """Footprint (m) of one pixel on the table at the nominal distance."""
        return self.distance / self.focal

    def rays(self) -> FloatArray:
        """Camera-frame ray directions (H * W, 3) with z = 1, row-major pixel order."""
        u = (np.arange(self.width) - (self.width - 1) / 2) / self.focal
        v = (np.arange(self.height) - (self.height - 1) / 2) / self.focal
        rays = np.ones((self.height, self.width, 3))
        rays[..., 0] = u[None, :]
        rays[..., 1] = v[:, None]
        return rays.reshape(-1, 3)

    def axis_hit(self) -> FloatArray:
        """Table point (x, y) in metres where the optical axis meets the table; (2,)."""
        axis = self.to_table[:, 2]
        return axis[:2] * (self.distance / -axis[2])


@dataclass(frozen=True)
class _Pose:
    """Object placement on the table: centre (m, table frame) and in-plane rotation (rad)."""

    centre: tuple[float, float]
    angle: float

    @classmethod
    def draw(cls, rng: Rng, camera: _Camera) -> _Pose:
        """Centred under the optical axis, shifted by up to 4 mm, rotated by up to 10 deg."""
        shift = rng.uniform(-POSE_SHIFT, POSE_SHIFT, size=2) + camera.axis_hit()
        return cls((float(shift[0]), float(shift[1])), math.radians(rng.uniform(-1, 1) * POSE_ROTATION_DEG))

    def to_object(self, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Table points (N,) -> object coordinates (u, v), metres."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - self.centre[0], y - self.centre[1]
        return c * dx + s * dy, -s * dx + c * dy


@dataclass(frozen=True)
class _Light:
    """Lighting: unit direction towards the light (3,) camera frame, global gain and
    per-channel white balance (3,)."""

    direction: FloatArray
    gain: float
    balance: FloatArray

    @classmethod
    def draw(cls, rng: Rng) -> _Light:
        """Light from the upper left, 25-35 deg off the optical axis; gain +-4 %, balance +-1.5 %."""
        azimuth = math.radians(225 + rng.uniform(-10, 10))
        polar = math.radians(rng.uniform(25, 35))
        direction = np.array(
            [math.sin(polar) * math.cos(azimuth), math.sin(polar) * math.sin(azimuth), -math.cos(polar)]
        )
        return cls(direction, float(rng.uniform(0.96, 1.04)), rng.uniform(0.985, 1.015, size=3))


@dataclass(frozen=True)
class _SensorDraws:
    """Every random number the sensors use, drawn up front so geometry changes never shift the stream:
    depth noise (H, W) unit normal and its sigma (m), uniforms (H, W) for speckle and slope dropouts,
    speckle rate, left-border band width per row (H,) pixels, RGB noise (H, W, 3) unit normal and sigma."""

    depth_noise: npt.NDArray[np.float32]
    depth_sigma: float
    speckle: npt.NDArray[np.float32]
    speckle_rate: float
    slope: npt.NDArray[np.float32]
    band: npt.NDArray[np.intp]
    rgb_noise: npt.NDArray[np.float32]
    rgb_sigma: float

    @classmethod
    def draw(cls, rng: Rng, size: tuple[int, int]) -> _SensorDraws:
        """Fresh draws for an image of ``size`` (width, height)."""
        width, height = size
        knots = rng.uniform(-1.0, 1.0, size=7)
        wobble = np.interp(np.linspace(0, 1, height), np.linspace(0, 1, knots.size), knots)
        band = np.rint(rng.uniform(0.02, 0.045) * width * (1 + 0.3 * wobble)).astype(np.intp)
        return cls(
            depth_noise=rng.standard_normal((height, width), dtype=np.float32),
            depth_sigma=float(rng.uniform(0.1 * MM, 0.3 * MM)),
            speckle=rng.random((height, width), dtype=np.float32),
            speckle_rate=float(rng.uniform(0.005, 0.01)),
            slope=rng.random((height, width), dtype=np.float32),
            band=np.maximum(band, 1),
            rgb_noise=rng.standard_normal((height, width, 3), dtype=np.float32),
            rgb_sigma=float(rng.uniform(0.006, 0.01)),
        )


@dataclass(frozen=True)
class _Scene:
    """What the rays see: the category's object placed by ``pose``, optionally with a defect."""

    category: _Category
    pose: _Pose
    defect: _Defect | None
    shift: float = 0.0  # line drift of the object's material, see _drift

    def height(self, x: FloatArray, y: FloatArray) -> FloatArray:
        """Surface height (m) above the table at table points (N,)."""
        u, v = self.pose.to_object(x, y)
        h = self.category.height(u, v)
        return h if self.defect is None else self.defect.height(u, v, h)


def _trace(scene: _Scene, camera: _Camera, rays: FloatArray) -> tuple[FloatArray, BoolArray]:
    """Ray-cast table + height field. rays: (N, 3) table-frame directions of camera rays with camera-frame
    z = 1. Returns the depth Z (N,) in metres along the optical axis and (N,) True where the fixed-point
    iteration Z <- (D - h(X(Z), Y(Z))) / -dz converged (False at occlusion edges)."""
    down = -rays[:, 2]
    depth = camera.distance / down
    u, v = scene.pose.to_object(depth * rays[:, 0], depth * rays[:, 1])
    active = np.flatnonzero(scene.category.sdf(u, v) < TRACE_MARGIN)
    for _ in range(TRACE_ITERATIONS):
        if active.size == 0:
            break
        old = depth[active]
        h = scene.height(old * rays[active, 0], old * rays[active, 1])
        new = (camera.distance - h) / down[active]
        depth[active] = new
        active = active[np.abs(new - old) > TRACE_TOLERANCE]
    converged = np.ones(depth.shape, dtype=bool)
    converged[active] = False
    return depth, converged


def _normals(points: FloatArray) -> FloatArray:
    """Unit surface normals (H, W, 3) facing the camera, from the gradients of organized points (H, W, 3)."""
    du = np.gradient(points, axis=1)
    dv = np.gradient(points, axis=0)
    n = -np.cross(du, dv)
    return n / np.maximum(np.linalg.norm(n, axis=2, keepdims=True), 1e-12)


def _drift(colour: FloatArray, u: FloatArray, v: FloatArray, tex: _Textures, shift: float) -> FloatArray:
    """The intact object albedo (N, 3) at object points (N,) as a new material batch, ``shift`` in [0, 1]:
    tinted per channel by ``1 + shift * (BATCH_TINT - 1)`` and with mottling raised by a factor
    ``1 + shift * (BATCH_MOTTLE[0] * low + BATCH_MOTTLE[1] * fine)``; unchanged (same array) at 0."""
    if shift == 0.0:
        return colour
    tint = 1.0 + shift * (np.asarray(BATCH_TINT) - 1.0)
    mottle = 1.0 + shift * (BATCH_MOTTLE[0] * tex.low(u, v) + BATCH_MOTTLE[1] * tex.fine(u, v))
    return colour * tint[None, :] * mottle[:, None]


def _surface(
    scene: _Scene, tex: _Textures, x: FloatArray, y: FloatArray, pixel: float
) -> tuple[FloatArray, BoolArray]:
    """Albedo (N, 3) and defect mask (N,) at the surface points hit, given by their table coordinates (N,).
    Object colour (after the line drift of ``scene.shift``, then the defect) is blended with the table over
    about one pixel (``pixel`` m) at the outline."""
    albedo = tex.table_albedo(x, y)
    mask = np.zeros(x.shape, dtype=bool)
    u, v = scene.pose.to_object(x, y)
    sdf = scene.category.sdf(u, v)
    near = np.flatnonzero(sdf < pixel)
    un, vn = u[near], v[near]
    weight = np.clip(0.5 - sdf[near] / pixel, 0.0, 1.0)
    colour = _drift(scene.category.albedo(un, vn, tex), un, vn, tex, scene.shift)
    if scene.defect is not None:
        weight = weight * scene.defect.presence(un, vn)
        colour = scene.defect.albedo(un, vn, colour)
        mask[near] = scene.defect.mask(un, vn) & (sdf[near] < 0)
    albedo[near] = _mix(albedo[near], colour, weight)
    return albedo, mask


def _shade(albedo: FloatArray, normals: FloatArray, light: _Light, noise: _SensorDraws) -> UInt8Array:
    """8-bit RGB (H, W, 3) from albedo (H, W, 3) and normals (H, W, 3): ambient + weak Lambert + noise."""
    lambert = np.clip(np.einsum("hwc,c->hw", normals, light.direction), 0.0, None)  # no BLAS threads
    shading = (AMBIENT + DIFFUSE * lambert) * light.gain
    rgb = albedo * shading[..., None] * light.balance + noise.rgb_sigma * noise.rgb_noise
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _sense(
    rays: FloatArray, depth: FloatArray, converged: BoolArray, normals: FloatArray, noise: _SensorDraws
) -> npt.NDArray[np.float32]:
    """Structured-light xyz (H, W, 3) float32 metres from camera rays (H, W, 3, z = 1), true depth (H, W),
    convergence (H, W) and normals (H, W, 3): depth noise growing with obliquity, (0, 0, 0) for speckles,
    steep or occluded surfaces and the left-border band."""
    facing = np.einsum("hwc,hwc->hw", normals, rays) / -np.linalg.norm(rays, axis=2)
    sigma = noise.depth_sigma * (1.0 + 2.0 * (1.0 - np.clip(facing, 0.0, 1.0)))
    xyz = rays * (depth + sigma * noise.depth_noise)[..., None]
    columns = np.arange(depth.shape[1])[None, :]
    missing = (
        ~converged
        | (noise.speckle < noise.speckle_rate)
        | (noise.slope < _smoothstep(0.5, 0.3, facing))
        | (columns < noise.band[:, None])
    )
    xyz[missing] = 0.0
    return xyz.astype(np.float32)


def _render_scene(
    scene: _Scene, camera: _Camera, light: _Light, tex: _Textures, noise: _SensorDraws, gt_value: int
) -> DemoSample:
    """Ray-cast, shade and sense one scene into a sample (see :class:`DemoSample` for shapes)."""
    shape = (camera.height, camera.width)
    rays = camera.rays()
    rays_table = np.einsum("nc,kc->nk", rays, camera.to_table)  # no BLAS threads
    depth, converged = _trace(scene, camera, rays_table)
    points = (rays * depth[:, None]).reshape(*shape, 3)
    normals = _normals(points)
    albedo, mask = _surface(scene, tex, depth * rays_table[:, 0], depth * rays_table[:, 1], camera.pixel)
    rgb = _shade(albedo.reshape(*shape, 3), normals, light, noise)
    xyz = _sense(rays.reshape(*shape, 3), depth.reshape(shape), converged.reshape(shape), normals, noise)
    gt = np.where(mask.reshape(shape), np.uint8(gt_value), np.uint8(0))
    height = (camera.distance + depth * rays_table[:, 2]).reshape(shape)  # depth = (D - h) / -dz, for h
    return DemoSample(rgb, xyz, gt, height)


def _render(
    cat: _Category,
    kind: str,
    split: str,
    index: int,
    size: tuple[int, int],
    seed: int,
    with_defect: bool,
    shift: float = 0.0,
) -> DemoSample:
    """Render one sample from its own seed (arguments already validated); ``shift`` is the line drift."""
    entropy = [seed, cat.cat_id, SPLITS.index(split), SAMPLE_KINDS.index(kind), index]
    pose_rng, tex_rng, sensor_rng, defect_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(entropy).spawn(_STREAM_COUNT)
    )
    camera = _Camera.draw(pose_rng, size)
    pose = _Pose.draw(pose_rng, camera)
    light = _Light.draw(pose_rng)
    table_half = 0.5 * FIELD_OF_VIEW * max(size) / min(size) + 0.1
    tex = _Textures.draw(tex_rng, table_half)
    noise = _SensorDraws.draw(sensor_rng, size)
    if kind == GOOD or not with_defect:
        return _render_scene(_Scene(cat, pose, None, shift), camera, light, tex, noise, 0)
    for _ in range(DEFECT_TRIES):  # a defect hidden from every pixel centre is redrawn (tiny images only)
        defect = _draw_defect(kind, cat, defect_rng, camera.pixel)
        scene = _Scene(cat, pose, defect, shift)
        sample = _render_scene(scene, camera, light, tex, noise, GT_VALUES[kind])
        if sample.gt.any():
            break
    return sample


# --------------------------------------------------------------------------------------------- validation


def _check_categories(categories: Sequence[str]) -> list[_Category]:
    """The named categories in order, duplicates dropped; InputError for an unknown name or none."""
    names = [categories] if isinstance(categories, str) else list(categories)
    choices = ", ".join(CATEGORIES)
    if not names:
        raise InputError(f"no demo categories given; valid choices: {choices}")
    for name in names:
        if name not in CATEGORIES:
            raise InputError(f"unknown demo category {name!r}; valid choices: {choices}")
    return [CATEGORIES[name] for name in dict.fromkeys(names)]


def _check_positive(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else InputError naming ``name`` and the bad value."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) in pixels, each >= MIN_SIDE, else InputError."""
    if not isinstance(size, Sequence) or len(size) != 2:
        raise InputError(f"size must be (width, height) in pixels, got {size!r}")
    return _check_positive("size width", size[0], MIN_SIDE), _check_positive("size height", size[1], MIN_SIDE)


def _check_sizes(
    sizes: Mapping[str, tuple[int, int]], cats: Sequence[_Category]
) -> dict[str, tuple[int, int]]:
    """Per-category sizes, each checked by :func:`_check_size`; InputError for a category not generated."""
    names = [cat.name for cat in cats]
    for name in sizes:
        if name not in names:
            raise InputError(
                f"a size is given for category {name!r}, which is not generated "
                f"(categories: {', '.join(names)})"
            )
    return {name: _check_size(value) for name, value in sizes.items()}


def _check_shift(shift: object) -> float:
    """The line drift ``shift`` as a float in [0, 1], else InputError naming the bad value."""
    if isinstance(shift, bool) or not isinstance(shift, int | float | np.integer | np.floating):
        raise InputError(f"shift must be a number in [0, 1], got {shift!r}")
    if not 0.0 <= float(shift) <= 1.0:  # also refuses NaN
        raise InputError(f"shift must be a number in [0, 1], got {shift!r}")
    return float(shift)


def _check_choice(what: str, value: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else InputError listing them."""
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}")
    return value


# --------------------------------------------------------------------------------------------- public API


def render_sample(
    category: str,
    kind: str = GOOD,
    *,
    split: str = "test",
    index: int = 0,
    size: tuple[int, int] = (400, 400),
    seed: int = 0,
    with_defect: bool = True,
    shift: float = 0.0,
) -> DemoSample:
    """Render one sample in memory exactly as :func:`generate` writes it: the file
    ``<category>/<split>/<kind>/*/<index>`` generated with ``seed`` and ``size`` (width, height).

    ``with_defect=False`` renders the same sample (same pose, light, texture and sensor noise) without its
    defect, with an all-zero gt. ``shift`` is the line drift of :func:`generate`. Raises InputError for
    unknown names or bad numbers.
    """
    cat = _check_categories([category])[0]
    _check_choice("split", split, SPLITS)
    _check_choice("sample kind", kind, SAMPLE_KINDS if split == "test" else (GOOD,))
    size = _check_size(size)
    index = _check_positive("index", index, 0)
    seed = _check_positive("seed", seed, 0)
    return _render(cat, kind, split, index, size, seed, with_defect, _check_shift(shift))


def camera_parameters(size: tuple[int, int]) -> CameraParameters:
    """The camera of every sample of ``size`` (width, height), as MVTec 3D-AD ships it per category in
    ``calibration/camera_parameters.json`` (:mod:`patchbank.camera_parameters`): focal length and
    principal point depend on the size only (a sample's camera distance and tilt vary, but they are not
    intrinsics); no lens distortion (kappa 0)."""
    width, height = _check_size(size)
    return CameraParameters(
        focus=_Camera.focal_for((width, height)) * SENSOR_PITCH,
        kappa=0.0,
        sx=SENSOR_PITCH,
        sy=SENSOR_PITCH,
        cx=(width - 1) / 2,
        cy=(height - 1) / 2,
        image_width=width,
        image_height=height,
    )


def _plan(n_train: int, n_validation: int, n_test: int) -> list[tuple[str, str, int]]:
    """(split, kind, count) for every folder of one category, in writing order."""
    return [
        ("train", GOOD, n_train),
        ("validation", GOOD, n_validation),
        *(("test", kind, n_test) for kind in SAMPLE_KINDS),
    ]


def _write_sample(folder: Path, index: int, sample: DemoSample, with_gt: bool) -> None:
    """Write rgb/NNN.png, xyz/NNN.tiff and (if ``with_gt``) gt/NNN.png under ``folder``."""
    stem = f"{index:03d}"
    Image.fromarray(sample.rgb).save(folder / "rgb" / f"{stem}.png", compress_level=1)  # 6x faster
    tifffile.imwrite(folder / "xyz" / f"{stem}.tiff", sample.xyz, photometric="rgb")
    if with_gt:
        Image.fromarray(sample.gt).save(folder / "gt" / f"{stem}.png")


def _fill_category(
    root: Path,
    cat: _Category,
    plan: list[tuple[str, str, int]],
    size: tuple[int, int],
    seed: int,
    shift: float,
    bar: tqdm,
) -> None:
    """Render and write every sample of ``cat`` into the (fresh) category folder ``root``, with its camera
    in ``calibration/camera_parameters.json`` as MVTec 3D-AD has it."""
    calibration = root / CALIBRATION_FILE
    calibration.parent.mkdir()
    calibration.write_text(camera_parameters(size).model_dump_json(indent=2) + "\n")
    for split, kind, count in plan:
        if count == 0:
            continue  # e.g. no validation split: banks then hold out training samples one at a time
        folder = root / split / kind
        subdirs = ("rgb", "xyz", "gt") if split == "test" else ("rgb", "xyz")
        for sub in subdirs:
            (folder / sub).mkdir(parents=True)
        for index in range(count):
            sample = _render(cat, kind, split, index, size, seed, True, shift)
            _write_sample(folder, index, sample, split == "test")
            bar.update(1)


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A folder to fill beside ``final`` (hidden), moved into its place whole when the block ends: the old one
    is first renamed aside, so ``final`` is at every moment either the complete old or the complete new
    folder. A failure inside the block removes the staged folder and leaves ``final`` as it was."""
    staged = final.with_name(f".{final.name}.tmp-{secrets.token_hex(4)}")
    staged.mkdir(parents=True)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    aside = None
    if final.exists() or final.is_symlink():
        aside = final.with_name(f".{final.name}.old-{secrets.token_hex(4)}")
        os.replace(final, aside)
    os.replace(staged, final)
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        else:
            aside.unlink()


def _write_category(
    out: Path,
    cat: _Category,
    plan: list[tuple[str, str, int]],
    size: tuple[int, int],
    seed: int,
    shift: float,
    bar: tqdm,
) -> Path:
    """Generate one category atomically: into a hidden sibling folder, then swapped into ``out/<name>``."""
    with staged_folder(out / cat.name) as staged:
        _fill_category(staged, cat, plan, size, seed, shift, bar)
    return out / cat.name


def generate(
    out: Path,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
    n_train: int = 40,
    n_validation: int = 10,
    n_test: int = 10,
    size: tuple[int, int] = (400, 400),
    seed: int = 0,
    progress: bool = True,
    shift: float = 0.0,
    sizes: Mapping[str, tuple[int, int]] | None = None,
) -> list[Path]:
    """Write a synthetic MVTec 3D-AD style dataset under ``out`` and return the category folders written.

    Per category: ``n_train`` train and ``n_validation`` validation good samples, and ``n_test`` test samples
    of each kind (good and every defect in :data:`DEFECT_KINDS`). ``size`` is (width, height) in pixels;
    ``sizes`` gives some categories a size of their own (``{"bracket": (480, 400)}``).
    Files: rgb/NNN.png (H, W, 3) uint8; xyz/NNN.tiff (H, W, 3) float32 metres in the camera frame with
    (0, 0, 0) for missing points; test gt/NNN.png (H, W) uint8, 0 = good, 253..255 on defect pixels; the
    camera in calibration/camera_parameters.json (:func:`camera_parameters`).
    Every file depends only on (seed, category, split, kind, index, size, shift). Each category folder is
    written next to its final place and swapped in whole, replacing an existing one.

    ``shift`` in [0, 1] is a line drift scenario (a new batch of material): the object's albedo is tinted
    per channel by ``1 + shift * (BATCH_TINT - 1)`` and its mottling raised (see :func:`_drift`), before
    defects are applied. Geometry, table, light and noise do not change, so xyz and gt files are identical
    for every shift and rgb differs only on the part; ``shift = 0`` (the default) is the undrifted data.

    Raises InputError for an unknown category, a non-positive count or size, a size for a category not
    generated, or a shift outside [0, 1].
    """
    cats = _check_categories(categories)
    plan = _plan(
        _check_positive("n_train", n_train),
        _check_positive("n_validation", n_validation, 0),
        _check_positive("n_test", n_test),
    )
    size = _check_size(size)
    own = _check_sizes(sizes or {}, cats)
    seed = _check_positive("seed", seed, 0)
    shift = _check_shift(shift)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = len(cats) * sum(count for _, _, count in plan)
    with tqdm(total=total, disable=not progress, unit="sample", desc="demo data") as bar:
        return [_write_category(out, cat, plan, own.get(cat.name, size), seed, shift, bar) for cat in cats]
