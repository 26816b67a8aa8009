"""``patchbank bench``: every stage of build and score of any method (late fusion included), the product's
path next to BTF's reference recipe (:mod:`patchbank_benchmarks.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from patchbank.cli import Command
from patchbank.errors import InputError


def _split(text: str, flag: str) -> list[str]:
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise InputError(f"{flag} needs at least one value")
    return items


def _positive(text: str, flag: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{flag} takes positive integers, got {text!r}")
    return int(text)


def default_methods() -> tuple[str, ...]:
    """``bench``'s methods unless told: the product's default method first (the memory figure's), then BTF's
    published one-bank configurations (``fpfh``, ``rgb+fpfh``). Here, not in the bench module, so that
    ``--help`` stays light (no torch at import)."""
    from patchbank.methods import DEFAULT_METHOD, MEMBER_SEP, PUBLISHED_METHODS

    return tuple(dict.fromkeys((DEFAULT_METHOD, *(MEMBER_SEP.join(m) for m in PUBLISHED_METHODS))))


def _configure(p: argparse.ArgumentParser) -> None:
    methods = ",".join(default_methods())
    p.add_argument(
        "--root", type=Path, default=Path("bench-work"), help="demo data and scratch (default bench-work)"
    )
    p.add_argument("--category", default="puck", help="demo category (default puck)")
    p.add_argument(
        "--methods",
        default=methods,
        help=f"comma-separated methods, late fusion included (default {methods}: the product's default "
        "method first; the memory figure loads the first method's bank)",
    )
    p.add_argument("--train", type=int, default=100, help="training samples (default 100)")
    p.add_argument(
        "--validation", type=int, default=10, help="validation samples: the thresholds' (default 10)"
    )
    p.add_argument("--test", type=int, default=10, help="test samples per kind (default 10: 60 in all)")
    p.add_argument("--size", type=int, default=800, help="demo image side, pixels (default 800)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--weights",
        help="backbone weights of every method: NAME[:VALUE] (e.g. random, file:PATH) or a file's path "
        "(default: each method's own; one whose default weights cannot load here, e.g. wide_resnet50_2's "
        "hub weights offline, falls back to random:0, marked: timings only)",
    )
    p.add_argument(
        "--precision", choices=["fp32", "bf16"], help="backbone arithmetic of the fast path's rgb parts"
    )
    p.add_argument("--batch-size", type=int, default=8, help="build batch size (default 8)")
    p.add_argument("--batch-sizes", default="1,8", help="batch sizes of the throughput table (default 1,8)")
    p.add_argument("--index-kinds", default="flat,hnsw", help="index kinds compared (default flat,hnsw)")
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="skip BTF's reference recipe: the one-bank methods' reference paths and the rgb+fpfh baseline "
        "every method is compared with (e.g. on a GPU box)",
    )
    p.add_argument(
        "--memory-categories",
        type=int,
        default=10,
        help="categories of the first method's bank a fresh service process loads, for its RSS (0: skip)",
    )
    p.add_argument("--json", type=Path, help="also write every figure as JSON")
    p.add_argument("--quiet", action="store_true")


def _bench(args: argparse.Namespace) -> int:
    from patchbank.config import Settings, default_device
    from patchbank.index import check_kind
    from patchbank.methods import parse_method
    from patchbank.weights import WeightsRequest
    from patchbank_benchmarks.bench import BenchConfig, run_bench

    s = Settings()
    methods = list(dict.fromkeys(parse_method(m).name for m in _split(args.methods, "--methods")))
    cfg = BenchConfig(
        root=args.root,
        category=args.category,
        methods=methods,
        n_train=args.train,
        n_validation=args.validation,
        n_test=args.test,
        size=args.size,
        weights=WeightsRequest.parse(args.weights or s.weights),
        device=default_device(args.device or s.device),
        batch_size=args.batch_size,
        batch_sizes=[_positive(v, "--batch-sizes") for v in _split(args.batch_sizes, "--batch-sizes")],
        index_kinds=[check_kind(k) for k in _split(args.index_kinds, "--index-kinds")],
        reference=not args.no_reference,
        memory_categories=args.memory_categories,
        precision=args.precision,
        progress=not args.quiet,
    )
    report = run_bench(cfg)
    if args.json:
        args.json.write_text(report.model_dump_json(indent=2))
    return 0


BENCH = Command(
    "bench",
    "time every stage of build and score of any method, fast path and service against BTF's reference "
    "recipe (rgb+fpfh, one sample at a time), in one run",
    _configure,
    _bench,
)


def _configure_drift(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root", type=Path, default=Path("drift-work"), help="data and banks (default drift-work)"
    )
    p.add_argument("--category", default="puck", help="demo category (default puck)")
    p.add_argument(
        "--seeds",
        default="11:12,21:22",
        help="pairs OLD:NEW of demo-data seeds, one scenario each (default 11:12,21:22)",
    )
    p.add_argument(
        "--shift", type=float, default=0.5, help="the new setting's material shift, 0-1 (default 0.5)"
    )
    p.add_argument("--train", type=int, default=40, help="training samples of each setting (default 40)")
    p.add_argument("--validation", type=int, default=10, help="validation goods of each setting (default 10)")
    p.add_argument("--test", type=int, default=10, help="test samples per kind (default 10)")
    p.add_argument("--size", type=int, default=224, help="demo image side, pixels (default 224)")
    p.add_argument(
        "--confirmed", type=int, default=40, help="new-setting parts scored and confirmed good (default 40)"
    )
    p.add_argument(
        "--target-frr", type=float, default=0.05, help="the calibrated false-reject rate (default 0.05)"
    )
    p.add_argument("--half-life-days", type=float, default=7.0, help="the forgetting curve's half-life")
    p.add_argument("--quiet", action="store_true")


def _drift(args: argparse.Namespace) -> int:
    from patchbank_benchmarks.drift import DriftConfig, run_drift

    pairs = []
    for pair in _split(args.seeds, "--seeds"):
        old, _, new = pair.partition(":")
        pairs.append((_positive(old, "--seeds"), _positive(new, "--seeds")))
    if not 0 <= args.shift <= 1:
        raise InputError(f"--shift must be in [0, 1], got {args.shift}")
    cfg = DriftConfig(
        root=args.root,
        category=args.category,
        seeds=tuple(pairs),
        shift=args.shift,
        n_train=args.train,
        n_validation=args.validation,
        n_test=args.test,
        size=args.size,
        confirmed=args.confirmed,
        target_frr=args.target_frr,
        half_life_days=args.half_life_days,
        progress=not args.quiet,
    )
    results = run_drift(cfg)
    return 0 if all(all(r.holds()) for r in results) else 1


DRIFT = Command(
    "drift",
    "a drifting line and a living bank: false alarms and detection before and after refresh-bank, on two "
    "independently generated scenarios",
    _configure_drift,
    _drift,
)


def _configure_rotation(p: argparse.ArgumentParser) -> None:
    from patchbank_synthetic.real3d import DEFAULT_CATEGORIES, DEFAULT_POINTS, SHAPES

    p.add_argument(
        "--root", type=Path, default=Path("rotation-work"), help="data and banks (default rotation-work)"
    )
    p.add_argument(
        "--categories",
        nargs="+",
        default=list(DEFAULT_CATEGORIES),
        choices=list(SHAPES),
        help=f"synthetic Real3D-AD categories (default {' '.join(DEFAULT_CATEGORIES)})",
    )
    p.add_argument("--seed", type=int, default=0, help="the data's seed, the same for both poses (default 0)")
    p.add_argument(
        "--test", type=int, default=20, help="test clouds per kind: good, bulge, sink (default 20)"
    )
    p.add_argument(
        "--points", type=int, default=DEFAULT_POINTS, help=f"points per cloud (default {DEFAULT_POINTS})"
    )
    p.add_argument("--quiet", action="store_true")


def _rotation(args: argparse.Namespace) -> int:
    from patchbank_benchmarks.rotation import RotationConfig, run_rotation

    cfg = RotationConfig(
        root=args.root,
        categories=args.categories,
        seed=args.seed,
        n_test=_positive(str(args.test), "--test"),
        points=_positive(str(args.points), "--points"),
        progress=not args.quiet,
    )
    return 0 if all(r.holds() for r in run_rotation(cfg)) else 1


ROTATION = Command(
    "rotation",
    "a 3D-only bank (point-fpfh) on the same synthetic Real3D-AD test clouds written aligned and in random "
    "poses: object AUROC of both and their difference",
    _configure_rotation,
    _rotation,
)
