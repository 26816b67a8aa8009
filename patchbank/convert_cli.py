"""``patchbank convert``: write a dataset with its point clouds in another format (:mod:`patchbank.convert`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from patchbank.cli import Command
from patchbank.clouds import Intrinsics
from patchbank.convert import FORMATS, convert_dataset
from patchbank.data import SPLITS
from patchbank.errors import InputError


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="source dataset root (MVTec 3D-AD layout)")
    p.add_argument("out", type=Path, help="where the converted dataset is written")
    p.add_argument("--format", required=True, choices=FORMATS, help="format of the written clouds")
    p.add_argument("--categories", nargs="+", help="categories to convert (default: every one)")
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits to convert")
    p.add_argument(
        "--intrinsics",
        type=Path,
        help="depth formats: JSON of the camera {fx, fy, cx, cy, depth_scale} (default: fitted per category "
        "from the clouds)",
    )
    p.add_argument(
        "--depth-scale",
        type=float,
        help="depth formats: metres per depth unit (default: the finest of 1 um, 10 um, 0.1 mm, 1 mm that "
        "holds the farthest point for depth-png; 1 (metres) for depth-tiff)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run(args: argparse.Namespace) -> int:
    if args.depth_scale is not None and args.depth_scale <= 0:
        raise InputError(f"--depth-scale must be positive, got {args.depth_scale}")
    given = Intrinsics.from_file(args.intrinsics) if args.intrinsics else None
    done = convert_dataset(
        args.root,
        args.out,
        args.format,
        args.categories,
        args.splits,
        given,
        args.depth_scale,
        progress=not args.quiet,
    )
    for c in done:
        print(f"{c.category}: {c.clouds} clouds written as {args.format} under {c.out}")
        if c.intrinsics is not None:
            cam = c.intrinsics
            how = "fitted to the clouds" if c.fitted else "given"
            print(
                f"  intrinsics ({how}, reprojection RMS {c.reprojection_px:.2g} px): fx {cam.fx:.6f}, "
                f"fy {cam.fy:.6f}, cx {cam.cx:.6f}, cy {cam.cy:.6f}, depth_scale {cam.depth_scale:g} m "
                f"-> {c.out / 'intrinsics.json'}"
            )
        print(
            f"  read back: largest difference {c.max_error_m:.3g} m, {c.changed_points} points changed "
            "between measured and missing"
        )
    return 0


CONVERT = Command(
    "convert",
    "write a dataset with its point clouds as depth images, PLY, PCD or .npy",
    _configure,
    _run,
    "Write a dataset (MVTec 3D-AD layout) with its point clouds in another format: 16-bit PNG or float "
    "TIFF depth images (with the camera's intrinsics.json, fitted from the clouds unless given), organized "
    "PLY or PCD, or .npy. RGB and masks are copied; every cloud is read back and the largest difference "
    "reported.",
)
