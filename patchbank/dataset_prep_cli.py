"""``patchbank preprocess`` (:mod:`patchbank.dataset_prep`): backgrounds removed once, into a mirror."""

from __future__ import annotations

import argparse
from pathlib import Path

from patchbank.cli import Command, add_model_flags, parse_model


def _configure(p: argparse.ArgumentParser) -> None:
    from patchbank.dataset_prep import PrepOptions

    p.add_argument("src", type=Path, help="source dataset root (MVTec 3D-AD layout), left untouched")
    p.add_argument("out", type=Path, help="where the preprocessed mirror is written (and resumed)")
    p.add_argument("--categories", nargs="+", help="categories to preprocess (default: every one)")
    p.add_argument(
        "--force", action="store_true", help="redo every sample, also when OUT holds other parameters"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_flags(p, PrepOptions)


def _run(args: argparse.Namespace) -> int:
    from patchbank.dataset_prep import RECORD_FILE, PrepOptions, preprocess_dataset

    options = parse_model(PrepOptions, args)
    done = preprocess_dataset(
        args.src, args.out, args.categories, options, force=args.force, progress=not args.quiet
    )
    for c in done:
        share = f"{100 * c.kept / c.points:.1f}%" if c.points else "none"
        gone = f", {c.removed} gone from the source removed" if c.removed else ""
        print(
            f"{c.category}: {c.samples} samples ({c.done} cleaned now, {c.skipped} already done{gone}), "
            f"{share} of the measured points kept as the part; {c.linked} files linked, {c.copied} copied "
            f"-> {c.out}"
        )
    print(f"record: {args.out / RECORD_FILE}")
    return 0


PREPROCESS = Command(
    "preprocess",
    "remove the background of every cloud of a dataset once (BTF's MVTec 3D-AD preprocessing) into a mirror",
    _configure,
    _run,
    "Write a mirror of a dataset (MVTec 3D-AD layout) with every point cloud's background removed, as BTF "
    "and M3DM preprocess MVTec 3D-AD: the table plane (RANSAC) and the points outside the largest DBSCAN "
    "cluster set to (0, 0, 0). The xyz files are rewritten; rgb, gt and every other file are hard-linked "
    "(copied where links are refused). A rerun skips what is done (it resumes an interrupted run); OUT "
    "holds one parameter set (--force redoes it with others).",
)
