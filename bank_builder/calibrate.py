"""Held-out good parts, and the decision thresholds set on them.

Held-out good parts are ``validation/good`` when the dataset has it; otherwise every training sample scored
with its own patches left out of the search (the bank still holds all training samples, as BTF's does).
A late-fusion bank's fusion is fitted on the same held-out goods (:mod:`patchbank.fusion`).

Thresholds, in the order a bank gets them:

- ``build-bank`` (uncalibrated default): the 99th percentile of the held-out image scores, and of the
  held-out maps' maxima for the pixel threshold;
- ``calibrate`` / ``build-bank --calibrate``, rule ``target-frr`` (default 1%): the image threshold at the
  target false-reject rate on the held-out goods (:func:`patchbank_builder.thresholds.threshold_at_frr`), the pixel
  threshold likewise on their maps' maxima, so a good part shows a defect region with at most that
  probability. The false-reject rate is then measured honestly by cross-validation over the held-out goods:
  each fold's threshold (and, for a fused bank, its fusion alignment) is set on the other folds only, and the
  pooled count is reported with its 95% Clopper-Pearson interval;
- rule ``f1``, given labelled anomalies (a split with defect kinds and masks): the image threshold with the
  best F1 on that split, and the pixel threshold with the best pixel F1 against the masks; its false-reject
  rate is measured on the held-out goods, which the rule did not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from patchbank import bank as bankfmt
from patchbank.bank import Calibration, FalseRejects, Manifest, ScoreStats, Thresholds, is_anomalous, now_utc
from patchbank.data import SampleRef
from patchbank.errors import BankError, InputError
from patchbank.features.base import GRID
from patchbank.fusion import fit_image
from patchbank.index import PatchIndex
from patchbank.rules import PUBLISHED, Scoring
from patchbank.scorer import BankScorer, Scores, load_scorer, score_patches
from patchbank_builder.evaluate import at_threshold, score_labelled
from patchbank_builder.options import DEFAULT_TARGET_FRR
from patchbank_builder.thresholds import (
    FRREstimate,
    clopper_pearson,
    cross_validated_frr,
    f1_threshold,
    threshold_at_frr,
)

QUANTILE = 0.99


def held_out_scores(
    indices: Sequence[PatchIndex],
    features: Sequence[np.ndarray],
    scoring: Scoring = PUBLISHED,
    keep: np.ndarray | None = None,
) -> list[Scores]:
    """Each member's raw scores of held-out goods (``validation/good``) from their features (per member,
    (N, 784, D) as the fitted extractors give them) and, when the scoring scores the part only, their (N, 784)
    patches on the part."""
    return [
        score_patches(index, f, scoring=scoring, keep=keep)
        for index, f in zip(indices, features, strict=True)
    ]


def held_out_training(
    indices: Sequence[PatchIndex],
    features: Sequence[np.ndarray],
    scoring: Scoring = PUBLISHED,
    keep: np.ndarray | None = None,
) -> list[Scores]:
    """Each member's raw scores of the training samples, each with its own bank vectors excluded.

    features: per member, (N, 784, D) training features; the bank's ids are ``sample * 784 + patch``;
    keep: (N, 784) their patches on the part (when the scoring scores the part only).
    """
    out = []
    for index, feats in zip(indices, features, strict=True):
        owner = index.ids // (GRID * GRID)
        out.append(
            Scores.concat(
                [
                    score_patches(
                        index,
                        feats[i : i + 1],
                        exclude_rows=[owner == i],
                        scoring=scoring,
                        keep=None if keep is None else keep[i : i + 1],
                    )
                    for i in range(len(feats))
                ]
            )
        )
    return out


def score_stats(source: str, image: Sequence[float], maxima: Sequence[float]) -> ScoreStats:
    arr = np.asarray(image, dtype=np.float64)
    qs = {f"p{int(q * 100)}": float(np.quantile(arr, q)) for q in (0.5, 0.9, 0.95, 0.99)}
    qs["max"] = float(arr.max())
    return ScoreStats(
        source=source,
        n=len(arr),
        image_scores=[float(v) for v in arr],
        map_maxima=[float(v) for v in maxima],
        mean=float(arr.mean()),
        std=float(arr.std()),
        quantiles=qs,
    )


def default_thresholds(stats: ScoreStats, quantile: float = QUANTILE) -> Thresholds:
    return Thresholds(
        image=float(np.quantile(stats.image_scores, quantile)),
        pixel=float(np.quantile(stats.map_maxima, quantile)),
        rule=f"p{quantile * 100:g} of {stats.n} held-out good parts ({stats.source}): image scores, map maxima",
    )


def _member_image_scores(manifest: Manifest) -> np.ndarray | None:
    """(M, n) raw held-out image scores of a fused bank's members (None for a one-bank method)."""
    if manifest.fusion is None:
        return None
    if any(m.held_out is None for m in manifest.members):
        raise InputError(f"{manifest.category}/{manifest.version} lacks its members' held-out scores")
    return np.array([m.held_out.image_scores for m in manifest.members if m.held_out is not None])


def cross_validate(manifest: Manifest, target: float) -> FRREstimate:
    """False-reject rate of the target-frr rule on held-out goods the threshold (and fusion) never saw."""
    fused = np.asarray(manifest.score_stats.image_scores)
    members = _member_image_scores(manifest)
    rule = manifest.fusion.rule if manifest.fusion else None

    def fold_scores(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if members is None or rule is None:
            return fused[train], fused[test]
        part = fit_image(
            rule, members[:, train], options=manifest.fusion.options if manifest.fusion else None
        )
        return part.apply(members[:, train]), part.apply(members[:, test])

    return cross_validated_frr(len(fused), fold_scores, target)


def calibrate_target_frr(manifest: Manifest, target: float = DEFAULT_TARGET_FRR) -> Manifest:
    """The manifest with thresholds at ``target`` false-reject rate on its held-out goods (no new version)."""
    stats = manifest.score_stats
    image = threshold_at_frr(stats.image_scores, target)
    pixel = threshold_at_frr(stats.map_maxima, target)
    est = cross_validate(manifest, target)
    folds = "leave-one-out" if est.folds == est.n else f"{est.folds}-fold"
    cal = Calibration(
        rule="target-frr",
        target_frr=target,
        image_rule=image.rule,
        pixel_rule=f"{pixel.rule} (maps' maxima)",
        false_rejects=FalseRejects(
            rate=est.rate,
            low=est.low,
            high=est.high,
            rejects=est.rejects,
            n=est.n,
            method=f"{folds} cross-validation over the held-out goods",
        ),
        created_at=now_utc(),
    )
    rule = f"target FRR {target:g} on {stats.n} held-out good parts ({stats.source})"
    return manifest.model_copy(
        update={
            "thresholds": Thresholds(image=image.value, pixel=pixel.value, rule=rule),
            "calibration": cal,
        }
    )


def calibrate_f1(
    manifest: Manifest, scorer: BankScorer, labelled: Sequence[SampleRef], progress: bool = True
) -> Manifest:
    """The manifest with F1-optimal thresholds on labelled samples (good and defective, with masks)."""
    labels = np.array([r.label for r in labelled])
    if labels.min() == labels.max():
        raise InputError("the F1 rule needs labelled good and defective samples in the split")
    scores, maps, masks = score_labelled(scorer, labelled, progress, desc="labelled")
    thr, f1 = f1_threshold(labels, scores)
    pix_thr, pix_f1 = f1_threshold(masks.ravel(), maps.ravel())
    goods = np.asarray(manifest.score_stats.image_scores)
    rejects = int(is_anomalous(goods, thr).sum())
    low, high = clopper_pearson(rejects, len(goods))
    cal = Calibration(
        rule="f1",
        image_rule=f"best image F1 ({f1:.3f}) on {len(labelled)} labelled samples",
        pixel_rule=f"best pixel F1 ({pix_f1:.3f}) against their masks",
        false_rejects=FalseRejects(
            rate=rejects / len(goods),
            low=low,
            high=high,
            rejects=rejects,
            n=len(goods),
            method=f"held-out goods ({manifest.score_stats.source}), not used by the F1 rule",
        ),
        labelled={
            "n": float(len(labelled)),
            "anomalous": float(labels.sum()),
            "image_f1": f1,
            "pixel_f1": pix_f1,
        },
        created_at=now_utc(),
    )
    return manifest.model_copy(
        update={
            "thresholds": Thresholds(
                image=thr, pixel=pix_thr, rule=f"F1-optimal on {len(labelled)} labelled samples"
            ),
            "calibration": cal,
        }
    )


def calibrate_version(
    banks: Path,
    category: str,
    version: str | None = None,
    target: float = DEFAULT_TARGET_FRR,
    labelled: Sequence[SampleRef] | None = None,
    device: str = "cpu",
    weights: str | None = None,
    activate: bool = True,
    progress: bool = True,
) -> Manifest:
    """Calibrate a written version (the active one by default) into a new version: the same index files, a
    new manifest with the thresholds, the calibration and the stored evaluation's decision rates at the new
    threshold. ``labelled`` given: the F1 rule on those samples, else the target-frr rule."""
    source = version or bankfmt.active_version(banks, category)
    if source is None:
        raise BankError(f"no bank for category {category!r} to calibrate (run build-bank first)")
    vdir = Path(banks) / bankfmt.check_category(category) / source
    if labelled is None:
        manifest = calibrate_target_frr(bankfmt.read_manifest(vdir), target)
    else:
        scorer = load_scorer(banks, category, source, device, weights)
        manifest = calibrate_f1(scorer.bank.manifest, scorer, labelled, progress)
    manifest = manifest.model_copy(
        update={
            "parent": source,
            "created_at": bankfmt.now_utc(),
            "evaluation": manifest.evaluation
            and at_threshold(manifest.evaluation, manifest.thresholds.image),
        }
    )
    return bankfmt.write_version(banks, manifest, bankfmt.copy_files_from(vdir), activate=activate)
