"""``build-bank``: training features -> coreset -> FAISS bank + manifest, held-out statistics and default
thresholds, evaluation on the test split when there is one, written atomically as a new version."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bank_builder.calibrate import default_thresholds, held_out_training, held_out_validation
from bank_builder.evaluate import Evaluation, evaluate
from patchbank import bank as bankfmt
from patchbank.coreset import CoresetSpec, create_sampler
from patchbank.data import SampleRef, digest, has_split, list_samples
from patchbank.errors import DataError
from patchbank.extract import extract_all
from patchbank.features import GRID, create_extractor
from patchbank.features.base import FeatureExtractor
from patchbank.index import PatchIndex, default_kind
from patchbank.scorer import BankScorer
from patchbank.weights import WeightsRequest

log = logging.getLogger(__name__)

DEFAULT_METHOD = "rgb+fpfh"


@dataclass
class BuildRequest:
    category: str
    data_root: Path
    banks: Path
    method: str = DEFAULT_METHOD
    options: dict[str, Any] = field(default_factory=dict)
    coreset: CoresetSpec = field(default_factory=CoresetSpec)
    index_kind: str | None = None  # None: patchbank.index.default_kind of the feature dimension
    weights: WeightsRequest = field(default_factory=WeightsRequest)
    device: str = "cpu"
    batch_size: int = 8
    evaluate: bool = True
    activate: bool = True
    progress: bool = True


@dataclass
class BuildResult:
    manifest: bankfmt.Manifest
    evaluation: Evaluation | None
    timings_s: dict[str, float] = field(default_factory=dict)


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Record the wall-clock seconds of a build stage."""
    start = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - start


def new_manifest(
    category: str,
    extractor: FeatureExtractor,
    index: PatchIndex,
    coreset: bankfmt.CoresetInfo,
    train: Sequence[SampleRef],
    stats: bankfmt.ScoreStats,
) -> bankfmt.Manifest:
    """The manifest of a bank not yet written (its version is assigned by ``write_version``)."""
    return bankfmt.Manifest(
        category=category,
        version="v0000",
        created_at=bankfmt.now_utc(),
        method=extractor.spec.method,
        features=extractor.spec,
        weights=extractor.weights,
        index_kind=index.kind,
        coreset=coreset,
        training=bankfmt.TrainingInfo(
            n_samples=len(train), samples=[r.name for r in train], digest=digest(train)
        ),
        score_stats=stats,
        thresholds=default_thresholds(stats),
        libraries=bankfmt.library_versions(),
    )


def build_bank(req: BuildRequest) -> BuildResult:
    bankfmt.check_category(req.category)
    timings: dict[str, float] = {}
    train = list_samples(req.data_root, req.category, "train", kinds=["good"])
    if len(train) < 2:
        raise DataError(
            f"{req.data_root}/{req.category}/train/good holds {len(train)} sample; a bank needs 2 or more"
        )
    with timed(timings, "extractor"):
        extractor = create_extractor(req.method, req.options, req.weights, req.device)
    size = extractor.image_size
    log.info("%s: %d training samples, features %s", req.category, len(train), extractor.spec.describe())

    with timed(timings, "features"):
        feats = extract_all(extractor, train, size, req.batch_size, req.progress)  # (N, 784, D)
    flat = feats.reshape(-1, feats.shape[2])
    with timed(timings, "coreset"):
        sampler = create_sampler(req.coreset, device=req.device, progress=req.progress)
        rows = sampler.run(flat)
        kind = req.index_kind or default_kind(flat.shape[1])
        index = PatchIndex(flat[rows], rows, kind, req.device)
    log.info("coreset: %d of %d patches (%s)", len(rows), len(flat), req.coreset.sampler)

    with timed(timings, "held-out"):
        if has_split(req.data_root, req.category, "validation"):
            val = list_samples(req.data_root, req.category, "validation", kinds=["good"])
            stats = held_out_validation(extractor, index, val, size, req.progress)
        else:
            stats = held_out_training(index, feats, GRID * GRID)
    manifest = new_manifest(
        req.category,
        extractor,
        index,
        bankfmt.CoresetInfo(
            spec=req.coreset, n_patches=len(flat), size=len(rows), projected_dim=sampler.projected_dim
        ),
        train,
        stats,
    )

    evaluation = None
    if req.evaluate and has_split(req.data_root, req.category, "test"):
        test = list_samples(req.data_root, req.category, "test")
        with timed(timings, "evaluate"):
            scorer = BankScorer(bankfmt.Bank(manifest, index, Path()), extractor)
            evaluation = evaluate(scorer, test, req.progress)
        manifest.evaluation = evaluation.model_dump(exclude={"scores", "category", "bank_version"})

    with timed(timings, "write"):
        final = bankfmt.write_version(
            req.banks, manifest, lambda d: index.save(d / bankfmt.INDEX_FILE), activate=req.activate
        )
    if evaluation is not None:
        evaluation.bank_version = final.version
    return BuildResult(final, evaluation, timings)
