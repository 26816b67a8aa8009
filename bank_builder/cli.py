"""Command-line entry points: parse arguments, call one library function, print the result.

Every :class:`PatchbankError` becomes a one-line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patchbank.errors import InputError, PatchbankError
from patchbank.index import INDEX_KINDS

if TYPE_CHECKING:
    from bank_builder.build import BuildRequest
    from patchbank.coreset import CoresetSpec


def run(
    main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if not getattr(args, "quiet", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        return main(args)
    except PatchbankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--category", required=True, help="category name, e.g. cable_gland")
    p.add_argument(
        "--data-root", type=Path, help="dataset root (MVTec 3D-AD layout); default PATCHBANK_DATA_ROOT"
    )
    p.add_argument("--banks", type=Path, help="banks directory; default PATCHBANK_BANKS")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def _feature_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", help="timm backbone of rgb methods (default wide_resnet50_2)")
    p.add_argument("--layers", help="comma-separated backbone feature levels (default 2,3)")
    p.add_argument(
        "--fpfh-neighbours",
        choices=["grid", "kdtree"],
        help="FPFH neighbours: grid (pixel window, fast; default) or kdtree (Open3D, BTF as published)",
    )
    p.add_argument(
        "--background",
        choices=["keep", "plane"],
        help="3D background: keep every point (default) or remove the table plane (RANSAC + DBSCAN)",
    )
    p.add_argument(
        "--normalise",
        choices=["none", "modality"],
        help="rgb+fpfh: scale each modality to unit spread on the training patches (default none)",
    )
    p.add_argument(
        "--precision", choices=["fp32", "bf16"], help="backbone arithmetic of rgb methods (default fp32)"
    )
    p.add_argument("--coreset-ratio", type=float, default=0.1, help="fraction of patches kept (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the coreset's random projection")
    p.add_argument(
        "--index",
        choices=INDEX_KINDS,
        help="search index: flat (exact) or hnsw (approximate, faster); default hnsw from 256-d up, else flat",
    )
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", type=Path, help="local RGB backbone weights (.safetensors or .pt state dict)")
    w.add_argument(
        "--random-weights",
        nargs="?",
        const=0,
        type=int,
        metavar="SEED",
        help="randomly initialised backbone (tests and demos only)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--target-frr",
        type=float,
        help="calibration: false-reject rate aimed at on held-out good parts (default 0.01)",
    )


def build_bank_parser() -> argparse.ArgumentParser:
    from patchbank.methods import DEFAULT_METHOD

    p = argparse.ArgumentParser(
        prog="build-bank", description="Build a versioned anomaly bank for one category."
    )
    _common(p)
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        help=f"scoring method (default {DEFAULT_METHOD}: late fusion of an rgb and an fpfh bank); one "
        "extractor (fpfh, rgb, dino, rgb+fpfh) for one bank, or several joined by / for late fusion "
        "(e.g. dino/fpfh, rgb/fpfh@svm)",
    )
    _feature_options(p)
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="set the thresholds at --target-frr on held-out goods, with a cross-validated FRR (see calibrate)",
    )
    p.add_argument("--no-evaluate", action="store_true", help="skip evaluation on the test split")
    p.add_argument("--json", type=Path, help="also write the evaluation as JSON")
    _publishing(p)
    return p


def _publishing(p: argparse.ArgumentParser) -> None:
    from bank_builder.publish import DEFAULT_KEEP, DEFAULT_TOLERANCE

    p.add_argument(
        "--publish",
        action="store_true",
        help="make the new version active in Redis (REDIS_URL) so every replica swaps to it",
    )
    p.add_argument(
        "--force", action="store_true", help="publish even if it evaluates worse than the active one"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"how much worse (I-AUROC, AU-PRO, P-AUROC) is still published (default {DEFAULT_TOLERANCE})",
    )
    p.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        help=f"versions kept for rollback when publishing (default {DEFAULT_KEEP})",
    )


def build_bank_main(argv: Sequence[str] | None = None) -> int:
    return run(_build_bank, build_bank_parser(), argv)


def build_request(
    args: argparse.Namespace, method: str, strict: bool = True, **overrides: Any
) -> BuildRequest:
    """A BuildRequest from build-bank's (or compare's) arguments, settings filling the gaps."""
    from bank_builder.build import BuildRequest
    from patchbank.config import Settings, default_device, require
    from patchbank.methods import parse_method
    from patchbank.weights import WeightsRequest

    s = Settings()
    parsed = parse_method(method)
    use_settings = args.random_weights is None and parsed.needs_rgb_weights
    weights = args.weights or (s.weights if use_settings else None)
    if args.target_frr is not None and not 0 < args.target_frr < 1:
        raise InputError(f"--target-frr must be between 0 and 1, got {args.target_frr}")
    if args.target_frr is not None and not overrides.get("calibrate"):
        raise InputError("--target-frr applies to the calibration: add --calibrate")
    fields: dict[str, Any] = dict(
        category=args.category,
        data_root=require(args.data_root or s.data_root, "data root", "--data-root", "PATCHBANK_DATA_ROOT"),
        banks=require(args.banks or s.banks, "banks directory", "--banks", "PATCHBANK_BANKS"),
        method=parsed.name,
        options=member_options(parsed.members, args, strict),
        coreset=_coreset(args.coreset_ratio, args.seed),
        index_kind=args.index,
        weights=WeightsRequest(path=weights, random_seed=args.random_weights),
        device=default_device(args.device or s.device),
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    if args.target_frr is not None:
        fields["target_frr"] = args.target_frr
    fields.update(overrides)
    return BuildRequest(**fields)


def _build_bank(args: argparse.Namespace) -> int:
    from bank_builder.build import build_bank
    from bank_builder.evaluate import table
    from patchbank.config import Settings

    req = build_request(
        args, args.method, evaluate=not args.no_evaluate, calibrate=args.calibrate, activate=not args.publish
    )
    result = build_bank(req)
    m = result.manifest
    sizes = ", ".join(
        f"{mb.name} {mb.coreset.size} of {mb.coreset.n_patches} x {mb.features.dim}-d" for mb in m.members
    )
    print(
        f"built {m.category}/{m.version} ({m.method}): {sizes}; "
        f"image threshold {m.thresholds.image:.4g} ({m.thresholds.rule})"
    )
    print(f"bank: {Path(req.banks) / m.category / m.version}")
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items()))
    if result.evaluation is not None:
        print(table(result.evaluation))
        if args.json:
            args.json.write_text(result.evaluation.model_dump_json(indent=2))
    if args.publish:
        _publish(req.banks, m.category, m.version, Settings().redis_url, args)
    return 0


def _publish(
    banks: Path, category: str, version: str, redis_url: str | None, args: argparse.Namespace
) -> None:
    from bank_builder.publish import publish_version

    pruned = publish_version(banks, category, version, redis_url, args.force, args.tolerance, args.keep)
    where = "Redis and the banks directory" if redis_url else "the banks directory (no REDIS_URL)"
    print(f"published {category}/{version} in {where}" + (f"; pruned {', '.join(pruned)}" if pruned else ""))


def publish_bank_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="publish-bank", description="Make an existing bank version active everywhere (also: rollback)."
    )
    p.add_argument("--category", required=True)
    p.add_argument("--version", required=True, help="e.g. v0003")
    p.add_argument("--banks", type=Path, help="banks directory; default PATCHBANK_BANKS")
    p.add_argument("--quiet", action="store_true")
    _publishing(p)
    return p


def publish_bank_main(argv: Sequence[str] | None = None) -> int:
    return run(_publish_bank, publish_bank_parser(), argv)


def _publish_bank(args: argparse.Namespace) -> int:
    from patchbank.config import Settings, require

    s = Settings()
    banks = require(args.banks or s.banks, "banks directory", "--banks", "PATCHBANK_BANKS")
    _publish(banks, args.category, args.version, s.redis_url, args)
    return 0


RGB_MEMBERS = ("rgb", "dino")


def member_options(
    members: Sequence[str], args: argparse.Namespace, strict: bool = True
) -> dict[str, dict[str, Any]]:
    """Each member extractor's options from the feature flags; ``strict``: refused where no member takes
    them (compare checks that against all its methods at once, then builds each with what applies)."""
    rgb: dict[str, Any] = {}
    if args.backbone:
        rgb["backbone"] = args.backbone
    if args.precision:
        rgb["precision"] = args.precision
    if args.layers:
        try:
            rgb["layers"] = [int(v) for v in args.layers.split(",")]
        except ValueError as exc:
            raise InputError(f"--layers must be comma-separated integers, got {args.layers!r}") from exc
    fpfh: dict[str, Any] = {}
    if args.fpfh_neighbours:
        fpfh["neighbours"] = args.fpfh_neighbours
    if args.background == "plane":
        fpfh["background"] = {}
    has_rgb = any(m in RGB_MEMBERS or m == "rgb+fpfh" for m in members)
    has_fpfh = any("fpfh" in m for m in members)
    if strict and rgb and not has_rgb:
        raise InputError(f"--backbone/--layers/--precision apply to rgb methods, not {'/'.join(members)}")
    if strict and fpfh and not has_fpfh:
        raise InputError(f"--fpfh-neighbours/--background apply to fpfh methods, not {'/'.join(members)}")
    if strict and args.normalise and "rgb+fpfh" not in members:
        raise InputError("--normalise applies to the rgb+fpfh concatenation")
    out: dict[str, dict[str, Any]] = {}
    for m in members:
        if m in RGB_MEMBERS and rgb:
            out[m] = dict(rgb)
        elif m == "fpfh" and fpfh:
            out[m] = dict(fpfh)
        elif m == "rgb+fpfh":
            parts = {k: v for k, v in (("rgb", rgb), ("fpfh", fpfh)) if v}
            out[m] = {**parts, **({"normalise": args.normalise} if args.normalise else {})}
    return out


def _coreset(ratio: float, seed: int) -> CoresetSpec:
    """The coreset spec, with a one-line error for a bad ratio."""
    from pydantic import ValidationError

    from patchbank.coreset import CoresetSpec

    try:
        return CoresetSpec(ratio=ratio, seed=seed)
    except ValidationError as exc:
        raise InputError(f"--coreset-ratio must be in (0, 1], got {ratio}") from exc


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench",
        description="Time every stage of build and score, fast path against the reference path, in one run.",
    )
    p.add_argument(
        "--root", type=Path, default=Path("bench-work"), help="demo data and scratch (default bench-work)"
    )
    p.add_argument("--category", default="puck", help="demo category (default puck)")
    p.add_argument(
        "--methods", default="fpfh,rgb+fpfh", help="comma-separated methods (default fpfh,rgb+fpfh)"
    )
    p.add_argument("--train", type=int, default=100, help="training samples (default 100)")
    p.add_argument("--test", type=int, default=10, help="test samples per kind (default 10: 60 in all)")
    p.add_argument("--size", type=int, default=800, help="demo image side, pixels (default 800)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", type=Path, help="local RGB backbone weights (.safetensors or .pt state dict)")
    w.add_argument("--random-weights", nargs="?", const=0, type=int, metavar="SEED", help="random backbone")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="backbone arithmetic of the fast path")
    p.add_argument("--batch-size", type=int, default=8, help="build batch size (default 8)")
    p.add_argument("--batch-sizes", default="1,8", help="batch sizes of the throughput table (default 1,8)")
    p.add_argument("--index-kinds", default="flat,hnsw", help="index kinds compared (default flat,hnsw)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference path (e.g. on a GPU box)")
    p.add_argument(
        "--memory-categories", type=int, default=10, help="categories for the RSS figure (0: skip)"
    )
    p.add_argument("--json", type=Path, help="also write every figure as JSON")
    p.add_argument("--quiet", action="store_true")
    return p


def bench_main(argv: Sequence[str] | None = None) -> int:
    return run(_bench, bench_parser(), argv)


def _bench(args: argparse.Namespace) -> int:
    from bank_builder.bench import BenchConfig, run_bench
    from patchbank.config import Settings, default_device
    from patchbank.index import check_kind
    from patchbank.weights import WeightsRequest

    s = Settings()
    methods = _split(args.methods, "--methods")
    fused = [m for m in methods if len(_members(m)) > 1]
    if fused:
        raise InputError(
            f"bench times one-bank methods against BTF's reference path, not {', '.join(fused)} "
            "(compare evaluates late-fusion methods)"
        )
    weights = args.weights or (s.weights if args.random_weights is None else None)
    cfg = BenchConfig(
        root=args.root,
        category=args.category,
        methods=methods,
        n_train=args.train,
        n_test=args.test,
        size=args.size,
        weights=WeightsRequest(path=weights, random_seed=args.random_weights),
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


def _split(text: str, flag: str) -> list[str]:
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise InputError(f"{flag} needs at least one value")
    return items


def _positive(text: str, flag: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{flag} takes positive integers, got {text!r}")
    return int(text)


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate", description="Evaluate a bank on its category's test split.")
    _common(p)
    p.add_argument("--version", help="bank version (default: the active one)")
    p.add_argument("--weights", type=Path, help="the bank's RGB weights file if it moved (sha256 must match)")
    p.add_argument("--json", type=Path, help="write the figures and per-sample scores as JSON")
    return p


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    return run(_evaluate, evaluate_parser(), argv)


def _evaluate(args: argparse.Namespace) -> int:
    from bank_builder.evaluate import evaluate, table
    from patchbank.config import Settings, default_device, require
    from patchbank.data import list_samples
    from patchbank.scorer import load_scorer

    s = Settings()
    root = require(args.data_root or s.data_root, "data root", "--data-root", "PATCHBANK_DATA_ROOT")
    banks = require(args.banks or s.banks, "banks directory", "--banks", "PATCHBANK_BANKS")
    weights = args.weights or s.weights
    scorer = load_scorer(
        banks,
        args.category,
        args.version,
        default_device(args.device or s.device),
        str(weights) if weights else None,
    )
    ev = evaluate(scorer, list_samples(root, args.category, "test"), progress=not args.quiet)
    print(table(ev))
    if args.json:
        args.json.write_text(ev.model_dump_json(indent=2))
    return 0


def make_demo_data_parser() -> argparse.ArgumentParser:
    from bank_builder.demo_data import DEFAULT_CATEGORIES

    p = argparse.ArgumentParser(
        prog="make-demo-data",
        description="Write synthetic RGB + xyz inspection data in the MVTec 3D-AD layout.",
    )
    p.add_argument("out", type=Path, help="output dataset root")
    p.add_argument("--categories", nargs="+", default=list(DEFAULT_CATEGORIES), help="categories to generate")
    p.add_argument("--train", type=int, default=40, help="training samples per category")
    p.add_argument("--validation", type=int, default=10, help="validation/good samples per category")
    p.add_argument("--test", type=int, default=10, help="test samples per kind (good and each defect)")
    p.add_argument("--size", default="400", help="image size in pixels: PX or WIDTHxHEIGHT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    return p


def make_demo_data_main(argv: Sequence[str] | None = None) -> int:
    return run(_make_demo_data, make_demo_data_parser(), argv)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise InputError(f"--size must be PX or WIDTHxHEIGHT, got {text!r}")
    return (parts[0], parts[-1])


def _make_demo_data(args: argparse.Namespace) -> int:
    from bank_builder.demo_data import generate

    dirs = generate(
        args.out,
        args.categories,
        n_train=args.train,
        n_validation=args.validation,
        n_test=args.test,
        size=_parse_size(args.size),
        seed=args.seed,
        progress=not args.quiet,
    )
    for d in dirs:
        print(f"wrote {d}")
    return 0


def calibrate_parser() -> argparse.ArgumentParser:
    from bank_builder.calibrate import DEFAULT_TARGET_FRR, RULES

    p = argparse.ArgumentParser(
        prog="calibrate",
        description="Set a bank's OK/NG and region thresholds; writes a new version (same index files).",
    )
    _common(p)
    p.add_argument("--version", help="bank version to calibrate (default: the active one)")
    p.add_argument(
        "--rule",
        choices=RULES,
        default="target-frr",
        help="target-frr: at a false-reject rate on held-out goods (default); f1: best F1 on labelled anomalies",
    )
    p.add_argument(
        "--target-frr",
        type=float,
        default=DEFAULT_TARGET_FRR,
        help=f"false-reject rate aimed at (default {DEFAULT_TARGET_FRR})",
    )
    p.add_argument(
        "--labelled",
        default="test",
        help="rule f1: the split with labelled anomalies (default test; good and defect kinds with masks)",
    )
    p.add_argument("--weights", type=Path, help="the bank's RGB weights file if it moved (rule f1)")
    _publishing(p)
    return p


def calibrate_main(argv: Sequence[str] | None = None) -> int:
    return run(_calibrate, calibrate_parser(), argv)


def _calibrate(args: argparse.Namespace) -> int:
    from bank_builder.calibrate import calibrate_version
    from bank_builder.evaluate import describe_calibration
    from patchbank.config import Settings, default_device, require
    from patchbank.data import list_samples

    s = Settings()
    banks = require(args.banks or s.banks, "banks directory", "--banks", "PATCHBANK_BANKS")
    if not 0 < args.target_frr < 1:
        raise InputError(f"--target-frr must be between 0 and 1, got {args.target_frr}")
    labelled, device, weights = None, "cpu", None
    if args.rule == "f1":
        root = require(args.data_root or s.data_root, "data root", "--data-root", "PATCHBANK_DATA_ROOT")
        labelled = list_samples(root, args.category, args.labelled)
        device = default_device(args.device or s.device)
        weights = args.weights or s.weights
    m = calibrate_version(
        banks,
        args.category,
        args.version,
        target=args.target_frr,
        labelled=labelled,
        device=device,
        weights=str(weights) if weights else None,
        activate=not args.publish,
        progress=not args.quiet,
    )
    print(f"calibrated {m.category}/{m.parent} -> {m.version}: {m.thresholds.rule}")
    print(f"image threshold {m.thresholds.image:.4g}, pixel threshold {m.thresholds.pixel:.4g}")
    print(describe_calibration(m.calibration))
    if args.publish:
        _publish(banks, m.category, m.version, s.redis_url, args)
    return 0


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare",
        description="Build, calibrate and evaluate several methods on one category; print one table. "
        "The banks are written as inactive versions (publish-bank makes the chosen one active).",
    )
    _common(p)
    p.add_argument(
        "--methods",
        default="rgb+fpfh,rgb/fpfh,rgb/fpfh@svm",
        help="comma-separated methods (default rgb+fpfh,rgb/fpfh,rgb/fpfh@svm)",
    )
    _feature_options(p)
    p.add_argument("--json", type=Path, help="also write every method's evaluation as JSON")
    return p


def compare_main(argv: Sequence[str] | None = None) -> int:
    return run(_compare, compare_parser(), argv)


def _compare(args: argparse.Namespace) -> int:
    import json

    from bank_builder.build import build_bank
    from bank_builder.evaluate import compare_table

    methods = _split(args.methods, "--methods")
    results = []
    member_options([m for method in methods for m in _members(method)], args)  # flags no method takes
    for method in methods:
        result = build_bank(build_request(args, method, strict=False, calibrate=True, activate=False))
        if result.evaluation is None:
            raise InputError(f"category {args.category!r} has no test split to compare on")
        results.append(result.evaluation)
        print(f"{method}: {result.manifest.category}/{result.manifest.version}", file=sys.stderr)
    print(compare_table(results))
    if args.json:
        args.json.write_text(json.dumps([r.model_dump(exclude={"scores"}) for r in results], indent=2))
    return 0


def _members(method: str) -> tuple[str, ...]:
    from patchbank.methods import parse_method

    return parse_method(method).members
