"""``build-bank``: training features -> coreset -> FAISS bank(s) + manifest, held-out statistics, fusion and
thresholds (calibrated on request), evaluation on the test split when there is one, written atomically as a
new version. A late-fusion method builds one bank per member from one pass over the data."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from patchbank import bank as bankfmt
from patchbank.clouds import Intrinsics
from patchbank.coreset import CoresetSpec, create_sampler
from patchbank.data import SampleRef, digest, has_split, list_samples
from patchbank.errors import DataError
from patchbank.extract import extract_all
from patchbank.features import create_extractor
from patchbank.features.base import FeatureExtractor
from patchbank.fusion import Fusion, fit_fusion
from patchbank.index import PatchIndex, default_kind
from patchbank.methods import DEFAULT_METHOD, parse_method
from patchbank.rules import Scoring
from patchbank.scorer import BankScorer, Scores, check_same_size, fuse, part_finder
from patchbank.units import CloudScale, dataset_scale
from patchbank.weights import WeightsRequest
from patchbank_builder.calibrate import (
    calibrate_target_frr,
    default_thresholds,
    held_out_scores,
    held_out_training,
    score_stats,
)
from patchbank_builder.evaluate import Evaluation, Labelled, Scored, evaluate_scored
from patchbank_builder.options import DEFAULT_TARGET_FRR

log = logging.getLogger(__name__)


@dataclass
class BuildRequest:
    category: str
    data_root: Path
    banks: Path
    method: str = DEFAULT_METHOD
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per member extractor name
    coreset: CoresetSpec = field(default_factory=CoresetSpec)
    index_kind: str | None = None  # None: patchbank.index.default_kind of each member's dimension
    weights: WeightsRequest = field(default_factory=WeightsRequest)  # members that need weights
    member_weights: dict[str, WeightsRequest] = field(default_factory=dict)  # one member's, by name
    fusion_options: dict[str, Any] = field(default_factory=dict)  # the fusion rule's options
    scoring: dict[str, Any] = field(default_factory=dict)  # overrides of the method's scoring rule
    device: str = "cpu"
    batch_size: int = 8
    evaluate: bool = True
    report: Path | None = None  # with evaluate: write the HTML evaluation report into this folder
    calibrate: bool = False
    target_frr: float = DEFAULT_TARGET_FRR
    activate: bool = True
    progress: bool = True
    intrinsics: Intrinsics | None = None  # the depth camera (default: the dataset's intrinsics.json)


@dataclass
class BuildResult:
    manifest: bankfmt.Manifest
    evaluation: Evaluation | None
    timings_s: dict[str, float] = field(default_factory=dict)
    report: Path | None = None  # the evaluation report's index.html, when one was asked for


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Record the wall-clock seconds of a build stage."""
    start = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - start


def new_member(
    extractor: FeatureExtractor,
    index: PatchIndex,
    index_file: str,
    coreset: bankfmt.CoresetInfo,
    held_out: Scores | None = None,
) -> bankfmt.Member:
    """One member bank's manifest entry (with its raw held-out scores, which a fusion is fitted on)."""
    stats = None
    if held_out is not None:
        stats = bankfmt.MemberStats(
            image_scores=[float(v) for v in held_out.image],
            pixel_mean=float(held_out.maps.mean()),
            pixel_std=float(held_out.maps.std()),
        )
    return bankfmt.Member(
        features=extractor.spec,
        weights=extractor.weights,
        index_kind=index.kind,
        index_file=index_file,
        coreset=coreset,
        held_out=stats,
    )


def new_manifest(
    category: str,
    method: str,
    members: Sequence[bankfmt.Member],
    fusion: Fusion | None,
    training: bankfmt.TrainingInfo,
    stats: bankfmt.ScoreStats,
    scoring: Scoring,
    cloud_scale: CloudScale | None = None,
    intrinsics: Intrinsics | None = None,
    takes: Literal["image", "points"] = "image",
) -> bankfmt.Manifest:
    """The manifest of a bank not yet written (its version is assigned by ``write_version``)."""
    return bankfmt.Manifest(
        category=category,
        version="v0000",
        created_at=bankfmt.now_utc(),
        method=method,
        members=list(members),
        fusion=fusion,
        scoring=scoring,
        training=training,
        score_stats=stats,
        thresholds=default_thresholds(stats),
        libraries=bankfmt.library_versions(),
        cloud_scale=cloud_scale,
        intrinsics=intrinsics,
        input=takes,
    )


def training_info(train: Sequence[Labelled], digest: str) -> bankfmt.TrainingInfo:
    """What the manifest says of the training samples: their count, names and ``digest``."""
    return bankfmt.TrainingInfo(n_samples=len(train), samples=[r.name for r in train], digest=digest)


def coreset_index(
    features: np.ndarray, req: BuildRequest, ids: np.ndarray | None = None
) -> tuple[PatchIndex, bankfmt.CoresetInfo]:
    """(N, 784, D) training features -> the coreset's index, and what the manifest says of the coreset.
    ``ids``: (N * 784,) int64 origin of each flattened row (default: its row number, sample * 784 + patch)."""
    flat = features.reshape(-1, features.shape[2])
    sampler = create_sampler(req.coreset, device=req.device, progress=req.progress)
    rows = sampler.run(flat)
    origin = rows if ids is None else ids[rows]
    index = PatchIndex(flat[rows], origin, req.index_kind or default_kind(flat.shape[1]), req.device)
    log.info(
        "coreset: %d of %d patches of %d-d (%s)", len(rows), len(flat), flat.shape[1], req.coreset.sampler
    )
    info = bankfmt.CoresetInfo(
        spec=req.coreset, n_patches=len(flat), size=len(rows), projected_dim=sampler.projected_dim
    )
    return index, info


def build_bank(req: BuildRequest) -> BuildResult:
    bankfmt.check_category(req.category)
    method = parse_method(req.method)
    if method.input == "points":  # a 3D-only bank of unorganized clouds (Real3D-AD layout)
        from patchbank_builder.points import build_point_bank

        return build_point_bank(req)
    scoring = method.scoring(req.scoring)
    timings: dict[str, float] = {}
    train = list_samples(req.data_root, req.category, "train", kinds=["good"], intrinsics=req.intrinsics)
    if len(train) < 2:
        raise DataError(
            f"{req.data_root}/{req.category}/train/good holds {len(train)} sample; a bank needs 2 or more"
        )
    with timed(timings, "extractor"):
        extractors = [
            create_extractor(m, req.options.get(m), req.member_weights.get(m, req.weights), req.device)
            for m in method.members
        ]
        check_same_size(extractors)
    log.info(
        "%s: %d training samples, method %s: %s",
        req.category,
        len(train),
        method.name,
        "; ".join(e.spec.describe() for e in extractors),
    )

    val: list[SampleRef] = []
    if has_split(req.data_root, req.category, "validation"):
        val = list_samples(
            req.data_root, req.category, "validation", kinds=["good"], intrinsics=req.intrinsics
        )
    with timed(timings, "features"):  # the held-out goods in the same pass, adapted once the fit is known
        raw, parts = extract_all(extractors, train + val, req.batch_size, req.progress, part_finder(scoring))
        n = len(train)
        feats = [e.fit(f[:n]) for e, f in zip(extractors, raw, strict=True)]  # (N, 784, D) per member
        val_feats = [e.adapt(f[n:]) for e, f in zip(extractors, raw, strict=True)]
        keep, val_keep = (None, None) if parts is None else (parts[:n], parts[n:])
        del raw
    with timed(timings, "coreset"):  # the members' coresets side by side (the kernel releases the GIL)
        with ThreadPoolExecutor(max_workers=len(feats)) as pool:
            built = list(pool.map(partial(coreset_index, req=req), feats))
        indices = [index for index, _ in built]

    with timed(timings, "held-out"):
        if val:
            source, held = "validation", held_out_scores(indices, val_feats, scoring, val_keep)
        else:
            source, held = "train-leave-one-out", held_out_training(indices, feats, scoring, keep)
        fusion = None
        if method.fusion is not None:
            fusion = fit_fusion(
                method.fusion,
                np.stack([h.image for h in held]),
                np.stack([h.maps for h in held]),
                source,
                seed=req.coreset.seed,
                options=req.fusion_options,
            )
        final = fuse(fusion, held)
        stats = score_stats(source, final.image, final.maps.reshape(len(final.maps), -1).max(axis=1))
    files = bankfmt.index_files(len(extractors))
    members = [
        new_member(e, index, file, info, h)
        for e, (index, info), file, h in zip(extractors, built, files, held, strict=True)
    ]
    camera = train[0].intrinsics  # --intrinsics, else the dataset's
    scale = dataset_scale(train)
    training = training_info(train, digest(train))
    manifest = new_manifest(
        req.category, method.name, members, fusion, training, stats, scoring, scale, camera
    )
    if req.calibrate:
        manifest = calibrate_target_frr(manifest, req.target_frr)

    evaluation: Evaluation | None = None
    scored: Scored | None = None
    if req.evaluate and has_split(req.data_root, req.category, "test"):
        test = list_samples(req.data_root, req.category, "test", intrinsics=req.intrinsics)
        with timed(timings, "evaluate"):
            scorer = BankScorer(bankfmt.Bank(manifest, indices, Path()), extractors)
            evaluation, scored = evaluate_scored(scorer, test, req.progress)
        manifest.evaluation = evaluation.record()

    def write_indices(directory: Path) -> None:
        for index, file in zip(indices, files, strict=True):
            index.save(directory / file)

    with timed(timings, "write"):
        written = bankfmt.write_version(req.banks, manifest, write_indices, activate=req.activate)
    report = None
    if evaluation is not None:
        evaluation.bank_version = written.version
        if req.report is not None and scored is not None:
            from patchbank_builder.report import write_report

            report = write_report(req.report, evaluation, scored, written.thresholds.pixel)
    return BuildResult(written, evaluation, timings, report)
