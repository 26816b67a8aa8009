"""The offline commands: ``patchbank build`` (also the ``build-bank`` script), ``evaluate``, ``calibrate``,
``compare``, ``publish``. Each parses its flags (generated from :mod:`patchbank_builder.options` and the
registries), calls one library function, and prints the result. The engine is imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patchbank.cli import Command, add_model_flags, collect, given, parse_model, run_command
from patchbank.config import Settings, require, weights_override
from patchbank.errors import InputError
from patchbank.features import EXTRACTORS
from patchbank.fusion import FUSION_RULES
from patchbank.methods import Method, parse_method
from patchbank.points.features import POINT_EXTRACTORS
from patchbank.registry import NoOptions
from patchbank.rules import Scoring
from patchbank.weights import WeightsRequest
from patchbank_builder.options import (
    DEFAULT_TARGET_FRR,
    AllCategories,
    BuildOptions,
    CalibrateOptions,
    CompareOptions,
    EvaluateOptions,
    PublishOptions,
    RefreshOptions,
    Where,
)

if TYPE_CHECKING:
    from patchbank_builder.build import BuildRequest


def data_root(opts: Where, s: Settings) -> Path:
    """The dataset root: the flag, else the settings; ConfigError saying the three ways to set it."""
    return require(opts.data_root or s.data_root, "data root", "--data-root", "PATCHBANK_DATA_ROOT")


def banks_dir(opts: Where | PublishOptions, s: Settings) -> Path:
    """The banks directory: the flag, else the settings; ConfigError saying the three ways to set it."""
    return require(opts.banks or s.banks, "banks directory", "--banks", "PATCHBANK_BANKS")


def add_part_flags(p: argparse.ArgumentParser) -> None:
    """``--NAME.OPTION`` for every registered extractor (and ``--NAME.weights`` where it loads weights), and
    ``--RULE.OPTION`` for every fusion rule that has options."""
    for name in POINT_EXTRACTORS:
        group = p.add_argument_group(f"{name} options", f"apply with --method {name} (3D-only banks)")
        add_model_flags(group, POINT_EXTRACTORS.get(name).options_model, name)
    for name in EXTRACTORS:
        cls = EXTRACTORS.get(name)
        group = p.add_argument_group(f"{name} options", f"apply when the method has a {name} member")
        add_model_flags(group, cls.options_model, name)
        if cls.needs_weights:
            group.add_argument(
                f"--{name}.weights",
                dest=f"{name}.weights",
                metavar="SPEC",
                help=f"weights of the {name} member (default --weights, else {cls.default_weights})",
            )
    add_model_flags(
        p.add_argument_group(
            "scoring",
            "the method's scoring rule; its defaults: BTF's (reweighted-max, every patch) for fpfh and rgb+fpfh, map-max on the part for every other method",
        ),
        Scoring,
        "scoring",
    )
    for rule in FUSION_RULES:
        model = FUSION_RULES.get(rule).options_model
        if model is not NoOptions:
            add_model_flags(p.add_argument_group(f"fusion rule {rule}", f"apply with @{rule}"), model, rule)


def member_options(members: Sequence[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each member extractor's options from its ``--NAME.*`` flags (weights apart), checked against its
    options model here so that a bad value names its flag."""
    out = {}
    for m in members:
        opts = {k: v for k, v in collect(args, m).items() if k != "weights"}
        if opts:
            parts = POINT_EXTRACTORS if m in POINT_EXTRACTORS else EXTRACTORS
            parse_model(parts.get(m).options_model, args, m)
            out[m] = opts
    return out


def fusion_options(method: Method, args: argparse.Namespace) -> dict[str, Any]:
    """The fusion rule's options from its ``--RULE.*`` flags, checked against its options model."""
    if method.fusion is None:
        return {}
    parse_model(FUSION_RULES.get(method.fusion).options_model, args, method.fusion)
    return collect(args, method.fusion)


def scoring_options(method: Method, args: argparse.Namespace) -> dict[str, Any]:
    """The ``--scoring.*`` flags given, checked against the method's scoring rule."""
    options = collect(args, "scoring")
    method.scoring(options)
    return options


def check_part_flags(methods: Sequence[Method], args: argparse.Namespace) -> None:
    """Refuse ``--NAME.*`` flags of parts none of the methods has (they would silently do nothing)."""
    members = {m for method in methods for m in method.members}
    rules = {method.fusion for method in methods if method.fusion}
    for part in [*EXTRACTORS, *POINT_EXTRACTORS, *FUSION_RULES]:
        flags = given(args, part)
        if flags and part not in members | rules:
            names = ", ".join(method.name for method in methods)
            raise InputError(f"{', '.join(flags)}: {part} is not part of {names}")


def build_request(
    opts: BuildOptions | CompareOptions, method: Method, args: argparse.Namespace, **fields: Any
) -> BuildRequest:
    """A BuildRequest for one method from the command's options, settings filling the gaps."""
    from patchbank.clouds import Intrinsics
    from patchbank.config import default_device
    from patchbank_builder.build import BuildRequest

    s = Settings()
    weights = WeightsRequest.parse(opts.weights or s.weights)
    per_member = {
        m: WeightsRequest.parse(spec) for m in method.members if (spec := getattr(args, f"{m}.weights", None))
    }
    return BuildRequest(
        category=opts.category,
        data_root=data_root(opts, s),
        banks=banks_dir(opts, s),
        method=method.name,
        options=member_options(method.members, args),
        fusion_options=fusion_options(method, args),
        scoring=scoring_options(method, args),
        coreset=opts.coreset,
        index_kind=opts.index,
        weights=weights,
        member_weights=per_member,
        device=default_device(opts.device or s.device),
        batch_size=opts.batch_size,
        target_frr=opts.target_frr or DEFAULT_TARGET_FRR,
        progress=not opts.quiet,
        intrinsics=Intrinsics.from_file(opts.intrinsics) if opts.intrinsics else None,
        **fields,
    )


# -- build -------------------------------------------------------------------------------------------------


def _configure_build(p: argparse.ArgumentParser) -> None:
    add_model_flags(p, BuildOptions)
    add_part_flags(p)


def _build(args: argparse.Namespace) -> int:
    from patchbank_builder.build import build_bank
    from patchbank_builder.evaluate import table

    opts = parse_model(BuildOptions, args)
    method = parse_method(opts.method)
    check_part_flags([method], args)
    if opts.target_frr is not None and not opts.calibrate:
        raise InputError("--target-frr applies to the calibration: add --calibrate")
    req = build_request(
        opts,
        method,
        args,
        evaluate=opts.evaluate,
        report=opts.report,
        calibrate=opts.calibrate,
        activate=not opts.publish,
    )
    result = build_bank(req)
    m = result.manifest
    sizes = ", ".join(
        f"{mb.name} {mb.coreset.size} of {mb.coreset.n_patches} x {mb.features.dim}-d" for mb in m.members
    )
    score = "object" if m.input == "points" else "image"
    print(
        f"built {m.category}/{m.version} ({m.method}): {sizes}; {score} threshold {m.thresholds.image:.4g} ({m.thresholds.rule})"
    )
    print(f"bank: {Path(req.banks) / m.category / m.version}")
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items()))
    if result.evaluation is not None:
        print(table(result.evaluation))
        if opts.json_file:
            opts.json_file.write_text(result.evaluation.model_dump_json(indent=2))
    if result.report is not None:
        print(f"report: {result.report}")
    if opts.publish:
        _publish(req.banks, m.category, m.version, opts)
    return 0


BUILD = Command(
    "build",
    "build a versioned anomaly bank for one category",
    _configure_build,
    _build,
    "Build a versioned anomaly bank for one category: training features, coreset, FAISS bank(s) and manifest, "
    "thresholds on held-out goods, evaluation on the test split.",
)


def build_bank_main(argv: Sequence[str] | None = None) -> int:
    """The ``build-bank`` script: ``patchbank build`` under its headline name."""
    return run_command(BUILD, argv, prog="build-bank")


# -- publish -----------------------------------------------------------------------------------------------


def _publish(
    banks: Path, category: str, version: str, opts: BuildOptions | CalibrateOptions | PublishOptions
) -> None:
    from patchbank_builder.publish import publish_version

    redis_url = Settings().redis_url
    pruned = publish_version(banks, category, version, redis_url, opts.force, opts.tolerance, opts.keep)
    where = "Redis and the banks directory" if redis_url else "the banks directory (no REDIS_URL)"
    print(f"published {category}/{version} in {where}" + (f"; pruned {', '.join(pruned)}" if pruned else ""))


def _publish_command(args: argparse.Namespace) -> int:
    opts = parse_model(PublishOptions, args, publish=True)
    banks = banks_dir(opts, Settings())
    _publish(banks, opts.category, opts.version, opts)
    return 0


PUBLISH = Command(
    "publish",
    "make an existing bank version active everywhere (also: rollback)",
    lambda p: add_model_flags(p, PublishOptions, skip=("publish",)),
    _publish_command,
)


# -- evaluate ----------------------------------------------------------------------------------------------


def _evaluate(args: argparse.Namespace) -> int:
    from patchbank.config import default_device
    from patchbank.data import list_samples
    from patchbank.points.scorer import is_point_bank
    from patchbank.scorer import load_scorer
    from patchbank_builder.evaluate import evaluate_scored, table

    opts = parse_model(EvaluateOptions, args)
    if opts.all:
        return _survey(opts, args)
    one_category(opts, args)
    s = Settings()
    root = data_root(opts, s)
    banks = banks_dir(opts, s)
    device = default_device(opts.device or s.device)
    if is_point_bank(banks, opts.category, opts.version):  # 3D-only: object AUROC, point AUROC, point AU-PRO
        from patchbank_builder.points import evaluate_point_version

        if opts.report:
            raise InputError("--report draws anomaly maps of images; a 3D-only bank has none")
        ev = evaluate_point_version(banks, root, opts.category, opts.version, progress=not opts.quiet)
        print(table(ev))
        if opts.json_file:
            opts.json_file.write_text(ev.model_dump_json(indent=2))
        return 0
    scorer = load_scorer(
        banks, opts.category, opts.version, device, weights_override(opts.weights or s.weights)
    )
    ev, scored = evaluate_scored(scorer, list_samples(root, opts.category, "test"), progress=not opts.quiet)
    print(table(ev))
    if opts.json_file:
        opts.json_file.write_text(ev.model_dump_json(indent=2))
    if opts.report:
        from patchbank_builder.report import write_report

        print(f"report: {write_report(opts.report, ev, scored, scorer.bank.manifest.thresholds.pixel)}")
    return 0


EVALUATE = Command(
    "evaluate",
    "evaluate a bank on its category's test split (I-AUROC, P-AUROC, AU-PRO, FRR)",
    lambda p: add_model_flags(p, EvaluateOptions),
    _evaluate,
)


# -- calibrate ---------------------------------------------------------------------------------------------


def _calibrate(args: argparse.Namespace) -> int:
    from patchbank.config import default_device
    from patchbank.data import list_samples
    from patchbank_builder.calibrate import calibrate_version
    from patchbank_builder.evaluate import describe_calibration

    opts = parse_model(CalibrateOptions, args)
    s = Settings()
    banks = banks_dir(opts, s)
    labelled, device, weights = None, "cpu", None
    if opts.rule == "f1":
        from patchbank.points.scorer import is_point_bank

        if is_point_bank(banks, opts.category, opts.version):
            raise InputError(
                "--rule f1 scores a labelled split's images: a 3D-only bank takes --rule target-frr"
            )
        root = data_root(opts, s)
        labelled = list_samples(root, opts.category, opts.labelled)
        device = default_device(opts.device or s.device)
        weights = weights_override(opts.weights or s.weights)
    m = calibrate_version(
        banks,
        opts.category,
        opts.version,
        target=opts.target_frr,
        labelled=labelled,
        device=device,
        weights=weights,
        activate=not opts.publish,
        progress=not opts.quiet,
    )
    print(f"calibrated {m.category}/{m.parent} -> {m.version}: {m.thresholds.rule}")
    print(f"image threshold {m.thresholds.image:.4g}, pixel threshold {m.thresholds.pixel:.4g}")
    print(describe_calibration(m.calibration))
    if opts.publish:
        _publish(banks, m.category, m.version, opts)
    return 0


def _refresh(args: argparse.Namespace) -> int:
    from patchbank.config import default_device
    from patchbank_builder.refresh import RefreshRequest, refresh_bank

    opts = parse_model(RefreshOptions, args)
    s = Settings()
    root = opts.data_root or s.data_root
    report = refresh_bank(
        RefreshRequest(
            category=opts.category,
            banks=banks_dir(opts, s),
            data_root=root,
            feedback_dir=opts.feedback_dir,
            recall_dir=opts.recall_dir,
            redis_url=s.redis_url,
            half_life_days=opts.half_life_days,
            size=opts.size,
            holdout=opts.holdout,
            confirmations=opts.confirmations,
            publish=opts.publish,
            force=opts.force,
            tolerance=opts.tolerance,
            keep=opts.keep,
            device=default_device(opts.device or s.device),
            progress=not opts.quiet,
        )
    )
    print("\n".join(report.lines()))
    return 0


REFRESH = Command(
    "refresh",
    "a new bank version from the active one plus confirmed-good parts (the unrecalled forgotten first), "
    "evaluated and published through the guard",
    lambda p: add_model_flags(p, RefreshOptions),
    _refresh,
)


def refresh_bank_main(argv: Sequence[str] | None = None) -> int:
    """The ``refresh-bank`` script: ``patchbank refresh`` under its headline name."""
    return run_command(REFRESH, argv, prog="refresh-bank")


CALIBRATE = Command(
    "calibrate",
    "set a bank's OK/NG and region thresholds; writes a new version (same index files)",
    lambda p: add_model_flags(p, CalibrateOptions),
    _calibrate,
)


# -- compare -----------------------------------------------------------------------------------------------


def _configure_compare(p: argparse.ArgumentParser) -> None:
    add_model_flags(p, CompareOptions)
    add_part_flags(p)


def _compare(args: argparse.Namespace) -> int:
    from patchbank_builder.build import build_bank
    from patchbank_builder.evaluate import compare_table

    opts = parse_model(CompareOptions, args)
    methods = [parse_method(m) for m in opts.methods]
    if not methods:
        raise InputError("--methods needs at least one method")
    check_part_flags(methods, args)
    if opts.all:
        return _survey(opts, args)
    one_category(opts, args)
    results, costs = [], []
    for method in methods:
        result = build_bank(build_request(opts, method, args, calibrate=True, activate=False))
        if result.evaluation is None:
            raise InputError(f"category {opts.category!r} has no test split to compare on")
        results.append(result.evaluation)
        build_s = sum(s for stage, s in result.timings_s.items() if stage != "evaluate")
        costs.append((build_s, sum(m.coreset.size for m in result.manifest.members)))
        print(f"{method.name}: {result.manifest.category}/{result.manifest.version}", file=sys.stderr)
    print(compare_table(results, costs))
    if opts.json_file:
        opts.json_file.write_text(json.dumps([r.model_dump(exclude={"scores"}) for r in results], indent=2))
    return 0


# -- evaluate --all, compare --all -------------------------------------------------------------------------


def one_category(opts: AllCategories, args: argparse.Namespace) -> None:
    """Without --all: a category, and none of the survey's flags."""
    if opts.category is None:
        raise InputError("--category is required (or --all: every category of the data root)")
    if flags := [f"--{f}" for f in ("out", "fresh", "method") if getattr(args, f, None) is not None]:
        raise InputError(f"{', '.join(flags)}: apply with --all")


def _survey(opts: EvaluateOptions | CompareOptions, args: argparse.Namespace) -> int:
    """``evaluate --all`` / ``compare --all``: the survey's tables over every category of the data root."""
    from patchbank.config import default_device
    from patchbank_builder.survey import SurveyRequest, run_survey
    from patchbank_builder.survey_tables import render_text, write_survey

    if opts.category is not None:
        raise InputError("--category: --all surveys every category of the data root")
    alone = ("version", "json_file", "report")
    if flags := [f for f in alone if getattr(args, f, None) is not None]:
        names = ", ".join("--json" if f == "json_file" else f"--{f}" for f in flags)
        raise InputError(f"{names}: not with --all (the survey writes survey.md, .csv and .json)")
    s = Settings()
    banks = banks_dir(opts, s)
    out = opts.out or banks / "survey"
    if isinstance(opts, CompareOptions):
        given = args.methods is not None  # else: compare's methods, point-fpfh on a point-cloud category

        def recipe(method: str, category: str) -> BuildRequest:
            where = opts.model_copy(update={"category": category})
            return build_request(where, parse_method(method), args, calibrate=True, activate=False)

        methods, build, weights = (opts.methods if given else None), recipe, None
        build_weights = WeightsRequest()
    else:
        methods, build = ((opts.method,) if opts.method else None), None
        weights = weights_override(opts.weights or s.weights)
        build_weights = WeightsRequest.parse(opts.weights or s.weights)
    survey = run_survey(
        SurveyRequest(
            data_root=data_root(opts, s),
            banks=banks,
            out=out,
            methods=methods,
            build=build,
            fresh=opts.fresh,
            device=default_device(opts.device or s.device),
            weights=weights,
            build_weights=build_weights,
            progress=not opts.quiet,
        )
    )
    write_survey(survey, out)
    print(render_text(survey))
    print(f"survey: {out / 'survey.md'} (also survey.csv, survey.json; cells in {out / 'cells'})")
    return 0


COMPARE = Command(
    "compare",
    "build, calibrate and evaluate several methods on one category; print one table",
    _configure_compare,
    _compare,
    "Build, calibrate and evaluate several methods on one category and print one table. The banks are "
    "written as inactive versions ('patchbank publish' makes the chosen one active).",
)
