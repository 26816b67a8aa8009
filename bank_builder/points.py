"""3D-only banks of unorganized 360-degree clouds (Real3D-AD layout, :mod:`patchbank.points.data`): build and
evaluate. ``build_bank`` hands a point method (``point-fpfh``) to :func:`build_point_bank`; ``evaluate`` hands a
point bank to :func:`evaluate_point_version`.

Build: the prototypes' centre features (:mod:`patchbank.points.features`), one greedy coreset over all of
them (vector ids ``prototype * n_centres + centre``), one FAISS index, a manifest with ``input: points`` and the
extractor's spec, written as a new version like any bank (publishing, ACTIVE, Redis and the service's loader
are unchanged).

Thresholds come from held-out goods, and a Real3D-AD category has no good clouds but its few prototypes
(4) and no validation split: each prototype is scored, in turn, against a bank built exactly as the real one
(coreset at the same ratio) from the other prototypes alone. Leaving a prototype out of one shared coreset
instead would leave holes where the coreset had kept its vectors rather than a near-duplicate of another
prototype's, and inflate its score. The object threshold is then the 99th percentile of those held-out object
scores, and the point threshold the same of their largest point scores (the largest centre score, which a
point takes): with four goods both are about the largest, and ``calibrate`` replaces them at a target false-
reject rate by a normal prediction bound (too few goods for an empirical quantile).

Evaluate: each test cloud read as the reference evaluation reads it (a defective one's points and labels
from its label file), scored by :meth:`patchbank.points.scorer.PointBankScorer.predict` as the service scores
it; object AUROC, point AUROC and point AU-PRO (:mod:`patchbank.points.metrics`), overall and per defect
kind against all goods, stored in the manifest's ``EvaluationRecord`` (image_auroc = object AUROC,
pixel_auroc = point AUROC, au_pro = point AU-PRO).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from patchbank import bank as bankfmt
from patchbank.bank import Figures
from patchbank.errors import DataError, InputError
from patchbank.methods import parse_method
from patchbank.points.data import (
    GOOD,
    TEST,
    TRAIN,
    PointSampleRef,
    has_point_split,
    list_point_samples,
    point_digest,
    read_cloud,
    read_point_sample,
)
from patchbank.points.features import PointExtractor, PointFeatures, create_point_extractor
from patchbank.points.metrics import object_auroc, point_au_pro_regions, point_auroc, point_regions
from patchbank.points.scorer import POINTS, PointBankScorer, centre_scores, load_point_scorer
from patchbank.rules import Scoring
from patchbank.weights import NO_WEIGHTS
from patchbank_builder.build import (
    BuildRequest,
    BuildResult,
    coreset_index,
    new_manifest,
    timed,
    training_info,
)
from patchbank_builder.calibrate import calibrate_target_frr, score_stats
from patchbank_builder.evaluate import Evaluation, assemble, labelled_kinds


def training_features(
    extractor: PointExtractor, refs: Sequence[PointSampleRef], progress: bool = True
) -> list[PointFeatures]:
    """Each prototype's centres and features, read and featurised one at a time."""
    bar = tqdm(refs, desc="features", unit="cloud", disable=not progress)
    return [extractor.extract(read_cloud(ref.path)) for ref in bar]


def _stacked(
    feats: Sequence[PointFeatures], clouds: Sequence[int], stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (1, V, D) features of the given clouds and their (V,) int64 ids ``cloud * stride + centre``."""
    vectors = np.concatenate([feats[i].features for i in clouds])
    ids = np.concatenate([i * stride + np.arange(len(feats[i].features), dtype=np.int64) for i in clouds])
    return vectors[None], ids


def held_out_objects(feats: Sequence[PointFeatures], req: BuildRequest, stride: int) -> np.ndarray:
    """(P,) object score of each prototype against a bank of the others (coreset as the real bank's)."""
    quiet = dataclasses.replace(req, progress=False)
    scores = []
    for i in tqdm(range(len(feats)), desc="held-out", unit="cloud", disable=not req.progress):
        vectors, ids = _stacked(feats, [j for j in range(len(feats)) if j != i], stride)
        index, _ = coreset_index(vectors, quiet, ids=ids)
        scores.append(float(centre_scores(index, feats[i]).max()))
    return np.asarray(scores)


def build_point_bank(req: BuildRequest) -> BuildResult:
    """``build_bank`` for a point method: prototypes -> coreset -> FAISS bank, held-out thresholds, evaluation
    on the test split (when there is one and ``req.evaluate``), written as a new version."""
    bankfmt.check_category(req.category)
    method = parse_method(req.method)
    if method.input != POINTS:
        raise InputError(f"method {method.name} is not a 3D-only method")
    if req.report is not None:
        raise InputError(
            "the HTML report draws anomaly maps of images; a 3D-only bank has none (drop --report)"
        )
    timings: dict[str, float] = {}
    train = list_point_samples(req.data_root, req.category, TRAIN)
    if len(train) < 2:
        raise DataError(
            f"{req.data_root}/{req.category}/{TRAIN} holds {len(train)} prototype; a bank needs 2 or more"
        )
    name = method.members[0]
    with timed(timings, "extractor"):
        extractor = create_point_extractor(name, req.options.get(name))
    with timed(timings, "features"):
        feats = training_features(extractor, train, req.progress)
    stride = extractor.max_centres
    with timed(timings, "coreset"):
        vectors, ids = _stacked(feats, range(len(feats)), stride)
        index, info = coreset_index(vectors, req, ids=ids)
    with timed(timings, "held-out"):
        objects = held_out_objects(feats, req, stride)
        stats = score_stats("train-leave-one-out", objects, objects)
    member = bankfmt.Member(
        features=extractor.spec,
        weights=NO_WEIGHTS,
        index_kind=index.kind,
        index_file=bankfmt.INDEX_FILE,
        coreset=info,
        held_out=bankfmt.MemberStats(image_scores=[float(v) for v in objects]),
    )
    training = training_info(train, point_digest(train))
    manifest = new_manifest(
        req.category, method.name, [member], None, training, stats, Scoring(), takes=POINTS
    )
    if req.calibrate:
        manifest = calibrate_target_frr(manifest, req.target_frr)

    evaluation: Evaluation | None = None
    if req.evaluate and has_point_split(req.data_root, req.category, TEST):
        test = list_point_samples(req.data_root, req.category, TEST)
        with timed(timings, "evaluate"):
            scorer = PointBankScorer(bankfmt.Bank(manifest, [index], Path()), extractor)
            evaluation = evaluate_points(scorer, test, req.progress)
        manifest.evaluation = evaluation.record()

    with timed(timings, "write"):
        written = bankfmt.write_version(
            req.banks, manifest, lambda d: index.save(d / bankfmt.INDEX_FILE), activate=req.activate
        )
    if evaluation is not None:
        evaluation.bank_version = written.version
    return BuildResult(written, evaluation, timings)


def evaluate_points(
    scorer: PointBankScorer, refs: Sequence[PointSampleRef], progress: bool = True
) -> Evaluation:
    """The bank's object AUROC, point AUROC and point AU-PRO on labelled test clouds, overall and per defect
    kind (against all good clouds), with its decisions at the bank's object threshold."""
    labelled_kinds(refs, "test clouds (test/<n>_good.pcd and defects)")
    objects = np.zeros(len(refs))
    point_scores, labels, regions = [], [], []
    scoring_s = 0.0
    for i, ref in enumerate(tqdm(refs, desc="evaluate", unit="cloud", disable=not progress)):
        points, y = read_point_sample(ref)
        start = time.perf_counter()
        prediction = scorer.predict([points])[0]
        scoring_s += time.perf_counter() - start
        objects[i] = prediction.object_score
        point_scores.append(prediction.point_scores)
        labels.append(y)
        regions.append(point_regions(points, y))
    defective = np.array([r.kind != GOOD for r in refs], dtype=int)

    def figures(sel: np.ndarray) -> Figures:
        idx = np.flatnonzero(sel)
        return Figures(
            image_auroc=object_auroc(defective[idx], objects[idx]),
            pixel_auroc=point_auroc([labels[i] for i in idx], [point_scores[i] for i in idx]),
            au_pro=point_au_pro_regions([regions[i] for i in idx], [point_scores[i] for i in idx]),
            n=len(idx),
        )

    return assemble(scorer.bank.manifest, refs, objects, figures, scoring_s * 1000 / len(refs))


def evaluate_point_version(
    banks: Path, data_root: Path, category: str, version: str | None = None, progress: bool = True
) -> Evaluation:
    """``evaluate`` of a 3D-only bank version (the active one by default) on its category's test clouds."""
    scorer = load_point_scorer(bankfmt.load_bank(banks, category, version))
    return evaluate_points(scorer, list_point_samples(data_root, category, TEST), progress)
