"""``patchbank make-demo-data``: write synthetic RGB + xyz inspection data in the MVTec 3D-AD layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from patchbank.cli import Command
from patchbank.errors import InputError
from patchbank_synthetic.demo_data import DEFAULT_CATEGORIES


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="output dataset root")
    p.add_argument("--categories", nargs="+", default=list(DEFAULT_CATEGORIES), help="categories to generate")
    p.add_argument("--train", type=int, default=40, help="training samples per category")
    p.add_argument("--validation", type=int, default=10, help="validation/good samples per category")
    p.add_argument("--test", type=int, default=10, help="test samples per kind (good and each defect)")
    p.add_argument("--size", default="400", help="image size in pixels: PX or WIDTHxHEIGHT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--shift",
        type=float,
        default=0.0,
        metavar="S",
        help="line drift in [0, 1]: a new material batch (part tint and mottling change, geometry does not)",
    )
    p.add_argument("--quiet", action="store_true")


def parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise InputError(f"--size must be PX or WIDTHxHEIGHT, got {text!r}")
    return (parts[0], parts[-1])


def _make(args: argparse.Namespace) -> int:
    from patchbank_synthetic.demo_data import generate

    dirs = generate(
        args.out,
        args.categories,
        n_train=args.train,
        n_validation=args.validation,
        n_test=args.test,
        size=parse_size(args.size),
        seed=args.seed,
        progress=not args.quiet,
        shift=args.shift,
    )
    for d in dirs:
        print(f"wrote {d}")
    return 0


MAKE_DEMO_DATA = Command(
    "make-demo-data",
    "write synthetic RGB + xyz inspection data in the MVTec 3D-AD layout",
    _configure,
    _make,
    "Write synthetic RGB + xyz inspection data in the MVTec 3D-AD layout: 2.5D objects on a table seen by a "
    "perspective RGB-D camera, with geometric and colour-only defects, sensor noise and dropout. --shift S "
    "renders a line drift: a new material batch, the parts' colour and texture change, not their geometry.",
)
