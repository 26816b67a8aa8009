"""``patchbank convert-eyecandies``: the Eyecandies dataset as released, in the MVTec 3D-AD layout the banks
read (:mod:`patchbank.eyecandies_convert`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from patchbank.cli import Command


def _configure(p: argparse.ArgumentParser) -> None:
    from patchbank.eyecandies import DEFAULT_LIGHTING, LIGHTINGS

    p.add_argument("src", type=Path, help="Eyecandies root: <Category>/{train,val,test_public}/data/")
    p.add_argument("out", type=Path, help="where the MVTec 3D-AD layout is written")
    p.add_argument("--categories", nargs="+", help="categories to convert (default: every one under SRC)")
    p.add_argument(
        "--lighting",
        type=int,
        choices=range(len(LIGHTINGS)),
        default=DEFAULT_LIGHTING,
        metavar="N",
        help="image_N written as rgb: "
        + ", ".join(f"{i} {name}" for i, name in enumerate(LIGHTINGS))
        + f" (default {DEFAULT_LIGHTING}, as M3DM and CFM)",
    )
    p.add_argument(
        "--size", type=int, metavar="PX", help="resize every image to PX x PX (default: as released, 512)"
    )
    p.add_argument(
        "--frame",
        choices=("camera", "world"),
        default="camera",
        help="xyz in the camera frame (as MVTec 3D-AD) or the world frame (the sample's pose applied)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from patchbank.errors import InputError
    from patchbank.eyecandies_convert import ConversionOptions, convert_eyecandies

    try:
        options = ConversionOptions(lighting=args.lighting, size=args.size, frame=args.frame)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"--{first['loc'][0]}: {first['msg']}") from exc
    for c in convert_eyecandies(args.src, args.out, args.categories, options, progress=not args.quiet):
        folders = ", ".join(f"{folder} {n}" for folder, n in c.counts.items())
        print(f"{c.category}: {folders}; {c.written} written, {c.skipped} already there -> {c.out}")
    return 0


CONVERT_EYECANDIES = Command(
    "convert-eyecandies",
    "write the Eyecandies dataset in the MVTec 3D-AD layout (rgb, organized xyz, gt)",
    _configure,
    _run,
    "Write the Eyecandies dataset as released (<Category>/<split>/data/NNN_<item>) in the MVTec 3D-AD layout "
    "the banks read: one lighting's image as rgb, the 16-bit depth with info_depth.yaml and the published "
    "camera (f = 711.11 px at 512 px) as an organized xyz TIFF in metres, mask.png as gt. train -> train/good, "
    "val -> validation/good, test_public -> test/good and test/bad. Resumable: samples already written are "
    "skipped.",
)
