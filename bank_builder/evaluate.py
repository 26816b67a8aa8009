"""Evaluate a bank on a test split, as BTF does: I-AUROC, P-AUROC and AU-PRO at 224 x 224, overall and per
defect kind (each kind against all good samples), plus the decision rates at the bank's image threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from bank_builder.thresholds import clopper_pearson
from patchbank.bank import Calibration
from patchbank.data import GOOD, SampleRef, read_mask
from patchbank.errors import InputError
from patchbank.extract import iter_batches
from patchbank.metrics import au_pro, image_auroc, pixel_auroc
from patchbank.preprocess import resize_mask
from patchbank.scorer import BankScorer


class Figures(BaseModel):
    image_auroc: float = Field(description="I-AUROC on image scores")
    pixel_auroc: float = Field(description="P-AUROC on all pixels at 224 x 224")
    au_pro: float = Field(description="AU-PRO integrated to FPR 0.3, normalised")
    n: int = Field(description="samples (good + defective)")


class SampleScore(BaseModel):
    name: str
    kind: str
    image_score: float
    is_anomalous: bool


class Evaluation(BaseModel):
    """What ``evaluate --json`` writes."""

    category: str
    bank_version: str
    method: str
    image_auroc: float
    pixel_auroc: float
    au_pro: float
    n_test: int
    per_defect: dict[str, Figures]
    threshold: float
    false_reject_rate: float = Field(description="good test samples scored above the threshold")
    false_reject_ci: tuple[float, float] = Field(
        (0.0, 1.0), description="its 95% Clopper-Pearson interval (the test goods did not set the threshold)"
    )
    miss_rate: float = Field(description="defective test samples scored at or below the threshold")
    calibration: str | None = Field(
        None, description="how the threshold was calibrated, and its measured FRR"
    )
    scores: list[SampleScore]


def figures(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> Figures:
    return Figures(
        image_auroc=image_auroc(labels, scores),
        pixel_auroc=pixel_auroc(masks, maps),
        au_pro=au_pro(masks, maps),
        n=len(labels),
    )


def score_labelled(
    scorer: BankScorer, refs: Sequence[SampleRef], progress: bool = True, desc: str = "evaluate"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) image scores, (N, 224, 224) maps and the (N, 224, 224) bool ground truth of labelled samples."""
    scores, masks, maps = [], [], []
    for chunk, prepared, feats in iter_batches(scorer.extractors, refs, progress=progress, desc=desc):
        s = scorer.score_features(feats)
        scores.append(s.image)
        maps.append(s.maps)
        for ref, p in zip(chunk, prepared, strict=True):
            w, h = p.input_size
            masks.append(resize_mask(read_mask(ref, (h, w)), scorer.image_size))
    return np.concatenate(scores), np.concatenate(maps), np.stack(masks)


def evaluate(scorer: BankScorer, refs: Sequence[SampleRef], progress: bool = True) -> Evaluation:
    kinds = np.array([r.kind for r in refs])
    if GOOD not in kinds or len(set(kinds)) < 2:
        raise InputError("evaluation needs good and defective test samples (test/good and test/<defect>)")
    image, amaps, gts = score_labelled(scorer, refs, progress)
    labels = (kinds != GOOD).astype(int)
    overall = figures(labels, image, gts, amaps)
    per_defect = {}
    for kind in sorted(set(kinds) - {GOOD}):
        sel = (kinds == GOOD) | (kinds == kind)
        per_defect[kind] = figures(labels[sel], image[sel], gts[sel], amaps[sel])
    m = scorer.bank.manifest
    thr = m.thresholds.image
    ev = Evaluation(
        category=m.category,
        bank_version=m.version,
        method=m.method,
        image_auroc=overall.image_auroc,
        pixel_auroc=overall.pixel_auroc,
        au_pro=overall.au_pro,
        n_test=len(refs),
        per_defect=per_defect,
        threshold=thr,
        false_reject_rate=0.0,
        miss_rate=0.0,
        calibration=describe_calibration(m.calibration),
        scores=[
            SampleScore(name=r.name, kind=r.kind, image_score=float(v), is_anomalous=False)
            for r, v in zip(refs, image, strict=True)
        ],
    )
    return at_threshold(ev, thr)


def at_threshold(ev: Evaluation, threshold: float) -> Evaluation:
    """The evaluation's decisions, false-reject rate (with its interval) and miss rate at ``threshold``."""
    scores = [s.model_copy(update={"is_anomalous": s.image_score > threshold}) for s in ev.scores]
    good = [s.is_anomalous for s in scores if s.kind == GOOD]
    missed = [not s.is_anomalous for s in scores if s.kind != GOOD]
    return ev.model_copy(
        update={
            "threshold": threshold,
            "scores": scores,
            "false_reject_rate": float(np.mean(good)),
            "false_reject_ci": clopper_pearson(int(sum(good)), len(good)),
            "miss_rate": float(np.mean(missed)),
        }
    )


def describe_calibration(cal: Calibration | None) -> str | None:
    """One line: the calibration rule and the false-reject rate measured on goods that did not set it."""
    if cal is None:
        return None
    fr = cal.false_rejects
    target = f"target FRR {cal.target_frr:g}" if cal.target_frr is not None else "F1-optimal"
    return (
        f"calibrated ({target}): held-out FRR {fr.rate:.3f} ({fr.rejects}/{fr.n}, 95% CI "
        f"{fr.low:.3f}-{fr.high:.3f}, {fr.method})"
    )


def table(ev: Evaluation) -> str:
    """The figures as a fixed-width text table."""
    rows = [("kind", "n", "I-AUROC", "P-AUROC", "AU-PRO")]
    rows += [
        (k, str(f.n), f"{f.image_auroc:.3f}", f"{f.pixel_auroc:.3f}", f"{f.au_pro:.3f}")
        for k, f in ev.per_defect.items()
    ]
    rows.append(("all", str(ev.n_test), f"{ev.image_auroc:.3f}", f"{ev.pixel_auroc:.3f}", f"{ev.au_pro:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    head = f"{ev.category} {ev.bank_version} ({ev.method})"
    foot = (
        f"threshold {ev.threshold:.4g}: false-reject rate {ev.false_reject_rate:.3f} (95% CI "
        f"{ev.false_reject_ci[0]:.3f}-{ev.false_reject_ci[1]:.3f}), miss rate {ev.miss_rate:.3f} on the test split"
    )
    return "\n".join([head, *lines, foot, *([ev.calibration] if ev.calibration else [])])


def compare_table(evaluations: Sequence[Evaluation]) -> str:
    """Several methods on one category: I-AUROC / P-AUROC / AU-PRO per defect kind, one column per method,
    then each method's false-reject and miss rates on the test split at its calibrated threshold."""
    kinds = list(evaluations[0].per_defect)
    head = ["kind", "n", *(ev.method for ev in evaluations)]
    rows = [head, ["", "", *("I-AUROC P-AUROC AU-PRO" for _ in evaluations)]]

    def cell(f: Figures | Evaluation) -> str:
        return f"{f.image_auroc:.3f}   {f.pixel_auroc:.3f}   {f.au_pro:.3f}"

    for kind in kinds:
        rows.append(
            [kind, str(evaluations[0].per_defect[kind].n), *(cell(ev.per_defect[kind]) for ev in evaluations)]
        )
    rows.append(["all", str(evaluations[0].n_test), *(cell(ev) for ev in evaluations)])
    rows.append(
        ["FRR / miss", "", *(f"{ev.false_reject_rate:.3f} / {ev.miss_rate:.3f}" for ev in evaluations)]
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    rule = "-" * len(lines[0])
    title = f"{evaluations[0].category}: {len(evaluations)} methods, test split"
    return "\n".join([title, lines[0], lines[1], rule, *lines[2:-2], rule, *lines[-2:]])
