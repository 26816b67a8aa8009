"""The scale of point clouds: what a bank records of its training clouds, and the check that a sample's
cloud is in the bank's unit.

A cloud in millimetres scored against a bank built in metres is not an error the features notice: it
scores as one large anomaly, or (with a foreground rule) as nothing at all. So a bank records the median
depth and point spacing of its training clouds (:class:`CloudScale`), and a sample sent without a unit
whose median depth is more than :data:`RATIO_LIMIT` times off the bank's (its point spacing too, when both
can be measured) is refused with the unit it most likely is in. A sample sent with an explicit unit is
converted and not checked: the line said what it sends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from patchbank.clouds import UNIT_NAMES, UNITS
from patchbank.data import SampleRef, read_xyz
from patchbank.errors import InputError
from patchbank.preprocess import valid_points

RATIO_LIMIT = 30.0  # a sample this many times off the bank's scale (or 1 / this) is in another unit
MAX_ROWS = 64  # rows of a cloud measured (evenly spaced): ample for a 30x check, about 2 ms at any size
MAX_CLOUDS = 16  # training clouds measured when a bank is built


class CloudScale(BaseModel):
    """The scale of a bank's training clouds, both in metres (medians over the clouds measured)."""

    model_config = ConfigDict(extra="forbid")

    median_depth: float = Field(ge=0, description="median |z| of the valid points, metres")
    median_spacing: float = Field(
        ge=0, description="median distance between horizontally adjacent valid points, metres"
    )
    n_clouds: int = Field(ge=1, description="training clouds measured")


def measure(xyz: np.ndarray) -> tuple[float, float] | None:
    """(median |z|, median spacing) of an (H, W, 3) cloud's valid points, in its own unit; None without
    valid points. The spacing is 0 when no two valid points are horizontal neighbours."""
    rows = xyz[:: max(1, math.ceil(len(xyz) / MAX_ROWS))]
    valid = valid_points(rows)
    if not valid.any():
        return None
    depth = float(np.median(np.abs(rows[..., 2][valid])))
    pairs = valid[:, 1:] & valid[:, :-1]
    if not pairs.any():
        return depth, 0.0
    steps = np.linalg.norm(rows[:, 1:].astype(np.float64) - rows[:, :-1], axis=2)[pairs]
    return depth, float(np.median(steps))


def scale_of(clouds: Iterable[np.ndarray]) -> CloudScale | None:
    """The scale of several clouds in metres: medians of each cloud's; None when none has valid points."""
    found = [m for xyz in clouds if (m := measure(xyz)) is not None]
    if not found:
        return None
    depths, spacings = zip(*found, strict=True)
    return CloudScale(
        median_depth=float(np.median(depths)), median_spacing=float(np.median(spacings)), n_clouds=len(found)
    )


def dataset_scale(refs: Sequence[SampleRef], limit: int = MAX_CLOUDS) -> CloudScale | None:
    """:func:`scale_of` up to ``limit`` clouds of a dataset split, evenly spaced (read in metres)."""
    count = min(limit, len(refs))
    picks = sorted({round(i * (len(refs) - 1) / max(count - 1, 1)) for i in range(count)})
    return scale_of(read_xyz(refs[i].xyz, refs[i].intrinsics) for i in picks)


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if value > 0 and reference > 0 else None


def likely_unit(ratio: float) -> str | None:
    """The unit (mm, um) whose factor to metres a ratio of scales is nearest, within 10x; else None."""
    best = min((u for u in UNITS if u != "m"), key=lambda u: abs(math.log10(ratio * UNITS[u])))
    return best if abs(math.log10(ratio * UNITS[best])) < 1 else None


def check_scale(xyz: np.ndarray, bank: CloudScale, field: str, depth_image: bool = False) -> None:
    """InputError (400) when a cloud read as metres is more than :data:`RATIO_LIMIT` times off the bank's
    scale (median depth, and point spacing when both are measurable), naming the unit it likely is in.
    ``depth_image``: the metres came from the intrinsics' depth_scale, which the message then names."""
    measured = measure(xyz)
    if measured is None:
        return
    depth, spacing = measured
    ratios = [r for r in (_ratio(depth, bank.median_depth), _ratio(spacing, bank.median_spacing)) if r]
    if not ratios:
        return
    if not (all(r > RATIO_LIMIT for r in ratios) or all(r < 1 / RATIO_LIMIT for r in ratios)):
        return
    ratio = ratios[0]
    what = "median depth" if _ratio(depth, bank.median_depth) else "median point spacing"
    mine, theirs = (depth, bank.median_depth) if what == "median depth" else (spacing, bank.median_spacing)
    if depth_image:
        raise InputError(
            f"{field} is not at the bank's scale: its {what} is {mine:.4g} m, the bank's {theirs:.4g} m "
            f"({ratio:.3g} times): check the intrinsics' depth_scale (metres per depth unit, e.g. 0.001 "
            "for millimetres)"
        )
    unit = likely_unit(ratio) if ratio > 1 else None
    if unit:
        raise InputError(
            f"{field} looks like {UNIT_NAMES[unit]} ({what} {mine:.4g} vs the bank's {theirs:.4g} m): "
            f"send xyz_unit={unit}"
        )
    raise InputError(
        f"{field} is not in the bank's unit: its {what} is {mine:.4g} read as metres, the bank's "
        f"{theirs:.4g} m ({ratio:.3g} times): send xyz_unit (m, mm or um) to say its unit"
    )
