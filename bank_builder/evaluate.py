"""Evaluate a bank on a test split, as BTF does: I-AUROC, P-AUROC and AU-PRO at 224 x 224, overall and per
defect kind (each kind against all good samples), plus the decision rates at the bank's image threshold."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np

from patchbank.bank import Calibration, EvaluationRecord, Figures, Manifest, SampleScore, is_anomalous
from patchbank.data import GOOD, SampleRef, read_mask
from patchbank.errors import InputError
from patchbank.metrics import au_pro, image_auroc, pixel_auroc
from patchbank.points.features import POINT_EXTRACTORS
from patchbank.predict import predict_refs
from patchbank.preprocess import resize_mask
from patchbank.report import Scored
from patchbank.scorer import BankScorer
from patchbank_builder.thresholds import clopper_pearson

E = TypeVar("E", bound=EvaluationRecord)


class Labelled(Protocol):
    """A labelled test sample: an image sample (``SampleRef``) or a cloud (``PointSampleRef``)."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...


class Evaluation(EvaluationRecord):
    """What ``evaluate --json`` writes: the record a manifest stores, and which bank it is of."""

    category: str
    bank_version: str

    def record(self) -> EvaluationRecord:
        return EvaluationRecord.model_validate(self.model_dump(exclude={"category", "bank_version"}))


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
    """(N,) image scores, (N, 224, 224) maps and the (N, 224, 224) bool ground truth of labelled samples,
    each scored by :func:`patchbank.predict.predict` as the service scores it."""
    scores, masks, maps = [], [], []
    for chunk, preds in predict_refs(scorer, refs, progress=progress, desc=desc):
        for ref, p in zip(chunk, preds, strict=True):
            scores.append(p.image_score)
            maps.append(p.map224)
            w, h = p.input_size
            masks.append(resize_mask(read_mask(ref, (h, w)), scorer.image_size))
    return np.asarray(scores, dtype=np.float32), np.stack(maps), np.stack(masks)


def evaluate(scorer: BankScorer, refs: Sequence[SampleRef], progress: bool = True) -> Evaluation:
    """The bank's figures on a labelled test split (:func:`evaluate_scored` without the per-sample data)."""
    return evaluate_scored(scorer, refs, progress)[0]


def evaluate_scored(
    scorer: BankScorer, refs: Sequence[SampleRef], progress: bool = True
) -> tuple[Evaluation, Scored]:
    """The figures, and the scores, maps and masks they were computed from (what the report draws)."""
    labelled_kinds(refs, "test samples (test/good and test/<defect>)")
    start = time.perf_counter()
    image, amaps, gts = score_labelled(scorer, refs, progress)
    score_ms = (time.perf_counter() - start) * 1000 / len(refs)
    labels = (np.array([r.kind for r in refs]) != GOOD).astype(int)
    ev = assemble(
        scorer.bank.manifest,
        refs,
        image,
        lambda sel: figures(labels[sel], image[sel], gts[sel], amaps[sel]),
        score_ms,
    )
    return ev, Scored(refs, image, amaps, gts)


def labelled_kinds(refs: Sequence[Labelled], what: str) -> np.ndarray:
    """(n,) the samples' kinds; InputError unless there are good ones and defective ones (``what``)."""
    kinds = np.array([r.kind for r in refs])
    if GOOD not in kinds or len(set(kinds)) < 2:
        raise InputError(f"evaluation needs good and defective {what}")
    return kinds


def assemble(
    m: Manifest,
    refs: Sequence[Labelled],
    scores: np.ndarray,
    figures_of: Callable[[np.ndarray], Figures],
    score_ms: float,
) -> Evaluation:
    """An evaluation from each sample's score and ``figures_of`` a (n,) bool selection of the samples:
    overall, then per defect kind against all goods; decisions at the bank's image threshold."""
    kinds = np.array([r.kind for r in refs])
    overall = figures_of(np.ones(len(refs), dtype=bool))
    ev = Evaluation(
        category=m.category,
        bank_version=m.version,
        method=m.method,
        image_auroc=overall.image_auroc,
        pixel_auroc=overall.pixel_auroc,
        au_pro=overall.au_pro,
        n_test=len(refs),
        per_defect={k: figures_of((kinds == GOOD) | (kinds == k)) for k in sorted(set(kinds) - {GOOD})},
        score_ms=score_ms,
        threshold=m.thresholds.image,
        false_reject_rate=0.0,
        miss_rate=0.0,
        calibration=describe_calibration(m.calibration),
        scores=[
            SampleScore(name=r.name, kind=r.kind, image_score=float(v), is_anomalous=False)
            for r, v in zip(refs, scores, strict=True)
        ],
    )
    return at_threshold(ev, m.thresholds.image)


def at_threshold(ev: E, threshold: float) -> E:
    """The evaluation's decisions, false-reject rate (with its interval) and miss rate at ``threshold``."""
    scores = [
        s.model_copy(update={"is_anomalous": is_anomalous(s.image_score, threshold)}) for s in ev.scores
    ]
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
    first = "O-AUROC" if ev.method in POINT_EXTRACTORS else "I-AUROC"  # a 3D-only bank's: object AUROC
    rows = [("kind", "n", first, "P-AUROC", "AU-PRO")]
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


def compare_table(evaluations: Sequence[Evaluation], costs: Sequence[tuple[float, int]] = ()) -> str:
    """Several methods on one category: I-AUROC / P-AUROC / AU-PRO per defect kind, one column per method,
    then each method's false-reject and miss rates on the test split at its calibrated threshold, and its
    cost: ``costs`` (build seconds, bank vectors) per method, and the scoring milliseconds per sample."""
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
    tail = 1
    if costs:
        rows.append(["build s / vectors", "", *(f"{s:.1f} / {n}" for s, n in costs)])
        rows.append(["score ms / sample", "", *(f"{ev.score_ms or 0:.0f}" for ev in evaluations)])
        tail = 3
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    rule = "-" * len(lines[0])
    title = f"{evaluations[0].category}: {len(evaluations)} methods, test split"
    body, foot = lines[2 : -1 - tail], lines[-1 - tail :]
    return "\n".join([title, lines[0], lines[1], rule, *body, rule, *foot])
