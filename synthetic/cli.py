"""``patchbank make-demo-data``: write synthetic inspection data in a published layout (``--layout``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from patchbank.cli import Command
from patchbank.errors import InputError
from patchbank_synthetic.demo_data import DEFAULT_CATEGORIES

LAYOUTS = ("mvtec3d", "eyecandies", "real3d")


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="output dataset root")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="mvtec3d",
        help="the published layout to write: mvtec3d (RGB + organized xyz), eyecandies (lighting variants, "
        "16-bit depth, normals, pose) or real3d (360-degree unorganized point clouds, per-point labels)",
    )
    p.add_argument(
        "--categories",
        nargs="+",
        default=None,
        help=f"categories to generate (default: the layout's own; mvtec3d: {' '.join(DEFAULT_CATEGORIES)})",
    )
    p.add_argument("--train", type=int, default=40, help="training samples per category")
    p.add_argument("--validation", type=int, default=10, help="validation/good samples per category")
    p.add_argument("--test", type=int, default=10, help="test samples per kind (good and each defect)")
    p.add_argument(
        "--points",
        type=int,
        default=None,
        help="real3d: points per cloud, prototypes and test clouds alike (default 20000)",
    )
    p.add_argument(
        "--size",
        action=_SizeAction,
        default="400",
        metavar="[CATEGORY=]SIZE",
        help="image size in pixels, PX or WIDTHxHEIGHT; CATEGORY=SIZE gives one category its own (repeat "
        "the flag: --size 400 --size bracket=480x400)",
    )
    p.set_defaults(category_sizes=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--shift",
        type=float,
        default=0.0,
        metavar="S",
        help="line drift in [0, 1]: a new material batch (part tint and mottling change, geometry does not)",
    )
    p.add_argument("--quiet", action="store_true")


class _SizeAction(argparse.Action):
    """``--size SIZE`` sets ``size`` (every category's), ``--size CATEGORY=SIZE`` one ``category_sizes``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        name, sep, size = str(values).partition("=")
        if not sep:
            namespace.size = str(values)
            return
        if not name.strip():
            parser.error(f"--size {values}: CATEGORY=SIZE needs a category name before '='")
        namespace.category_sizes = {**(namespace.category_sizes or {}), name.strip(): size}


def category_sizes(args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    """The sizes ``--size CATEGORY=SIZE`` gave, parsed; InputError naming the flag of a bad one."""
    sizes = {}
    for name, text in (args.category_sizes or {}).items():
        try:
            sizes[name] = parse_size(text)
        except InputError as exc:
            raise InputError(f"--size {name}={text}: the size must be PX or WIDTHxHEIGHT") from exc
    return sizes


def parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise InputError(f"--size must be PX or WIDTHxHEIGHT, got {text!r}")
    return (parts[0], parts[-1])


def _make(args: argparse.Namespace) -> int:
    if args.category_sizes and args.layout != "mvtec3d":
        raise InputError(f"--size CATEGORY=SIZE is for --layout mvtec3d, not {args.layout}")
    if args.layout == "eyecandies":
        from patchbank_synthetic.eyecandies import generate_from_args
    elif args.layout == "real3d":
        from patchbank_synthetic.real3d import generate_from_args
    else:
        generate_from_args = _mvtec3d
    for d in generate_from_args(args):
        print(f"wrote {d}")
    return 0


def _mvtec3d(args: argparse.Namespace) -> list[Path]:
    from patchbank_synthetic.demo_data import generate

    return generate(
        args.out,
        args.categories or DEFAULT_CATEGORIES,
        n_train=args.train,
        n_validation=args.validation,
        n_test=args.test,
        size=parse_size(args.size),
        seed=args.seed,
        progress=not args.quiet,
        shift=args.shift,
        sizes=category_sizes(args),
    )


MAKE_DEMO_DATA = Command(
    "make-demo-data",
    "write synthetic inspection data in a published layout (MVTec 3D-AD, Eyecandies, Real3D-AD)",
    _configure,
    _make,
    "Write synthetic inspection data in a published layout. mvtec3d (the default): RGB + organized xyz of 2.5D "
    "objects on a table seen by a perspective RGB-D camera, with geometric and colour-only defects, sensor "
    "noise and dropout; --shift S renders a line drift: a new material batch, the parts' colour and texture "
    "change, not their geometry. eyecandies: the same scenes as Eyecandies releases them (six lighting "
    "variants, 16-bit depth, normals, pose, masks). real3d: 360-degree unorganized point clouds of closed "
    "objects, four training prototypes, test clouds in random poses with per-point labels.",
)
