"""``refresh-bank``: a new version of a category's bank from its active version plus confirmed-good parts,
its size bounded, what nothing recalls any more forgotten first.

1. Candidates: the review records (``POST /feedback``, kept under the feedback folder) that say a part is
   good: ``confirmed`` on an OK decision, ``false_alarm`` on an NG one; records already used by the active
   version's refresh are skipped. Each is scored against the active bank: one that scores above its
   threshold (far from the bank: a real drift, or a defect confirmed as good by mistake) is used only when
   ``confirmations`` different people confirmed it; the others are held back and listed, as is a part any
   reviewer called defective on the same decision.
2. The accepted candidates are split (by their id's hash, never by order): a fit part whose patches join the
   bank, a held-out part that, with the dataset's ``validation/good`` when there is one, sets the new
   thresholds; no candidate is scored against itself.
3. Per member, a weighted greedy k-center over the old vectors and the new patches chooses at most the
   bank's bound of vectors (``size``; default twice the built version's size, kept by every refresh after
   it: room for a second appearance of the part before anything must go): a new patch weighs 1, an old
   vector its retention from the recall statistics (:mod:`patchbank.recall`: strength 1 + recalls, age
   since the last recall, R = exp(-age / (S * tau)), tau = half-life / ln 2), so old vectors that good
   parts keep matching stay, and those nothing matched for long fade first.
4. Both versions are evaluated on the same labelled test split(s) and the new one is published only when it
   is no worse beyond the tolerance (otherwise it stays on disk, unpublished). Refused or not, the report
   says what changed. Rollback: ``patchbank publish --category C --version <old>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from patchbank import bank as bankfmt
from patchbank.data import has_split, list_samples
from patchbank.errors import DataError, InputError
from patchbank.extract import extract_all
from patchbank.fusion import fit_fusion
from patchbank.index import PatchIndex
from patchbank.predict import Sample
from patchbank.preprocess import Prepared
from patchbank.recall import RecallStats, merged_files, read_redis
from patchbank.scorer import BankScorer, fuse, load_scorer, part_finder
from patchbank_builder.calibrate import calibrate_target_frr, default_thresholds, held_out_scores, score_stats
from patchbank_builder.evaluate import evaluate_scored

log = logging.getLogger(__name__)

GOOD_VERDICTS = {("confirmed", "OK"), ("false_alarm", "NG")}  # (verdict, decision): the part is good
AUTO_ACCEPT = "auto-accept"  # the service's reviewer name for parts it kept without review
AUTO_NOTE = re.compile(r"below the ([0-9.]+) quantile")
DAY_S = 86400.0
GROWTH = 2  # the default bound of a living bank: this many times its built size


@dataclass
class Candidate:
    """A part a reviewer said is good, with its files and who said so."""

    decision_id: str
    folder: Path
    files: dict[str, str]
    xyz_unit: str | None
    intrinsics: dict[str, Any] | None
    confirmed_by: set[str] = field(default_factory=set)
    disputed_by: set[str] = field(default_factory=set)  # reviewers who said the part is defective
    auto_accept_below: float | None = None  # kept by the service's auto-accept at this quantile
    score: float | None = None  # against the active bank

    def sample(self) -> Sample:
        from patchbank.clouds import Intrinsics

        camera = Intrinsics.model_validate(self.intrinsics) if self.intrinsics else None
        xyz = self.folder / self.files["xyz"]
        return Sample(
            (self.folder / self.files["rgb"]).read_bytes(),
            xyz.read_bytes(),
            xyz.name,
            self.decision_id,
            intrinsics=camera,
            xyz_unit=self.xyz_unit,  # type: ignore[arg-type]
        )


def read_candidates(feedback_dir: Path, category: str) -> list[Candidate]:
    """The category's review records that say a part is good and kept its files, one per decision, with who
    confirmed it and who, on the same decision, said it is defective."""
    folder = feedback_dir / category
    found: dict[str, Candidate] = {}
    disputes: dict[str, set[str]] = {}
    for record_file in sorted(folder.glob("*/record.json")) if folder.is_dir() else []:
        try:
            record = json.loads(record_file.read_text())
            decision = record["decision"]
            verdict = (record["verdict"], decision["decision"])
            files = record.get("files") or {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unreadable review record %s: %s", record_file, exc)
            continue
        ident, who = decision["id"], str(record.get("who", ""))
        if verdict not in GOOD_VERDICTS:
            disputes.setdefault(ident, set()).add(who)
            continue
        if not {"rgb", "xyz"} <= set(files):
            continue
        cand = found.setdefault(
            ident,
            Candidate(ident, record_file.parent, files, record.get("xyz_unit"), record.get("intrinsics")),
        )
        cand.confirmed_by.add(who)
        if who == AUTO_ACCEPT and (quantile := AUTO_NOTE.search(str(record.get("note") or ""))):
            cand.auto_accept_below = float(quantile.group(1))
    for ident, who in disputes.items():
        if ident in found:
            found[ident].disputed_by |= who
    return list(found.values())


@dataclass
class RefreshRequest:
    category: str
    banks: Path
    data_root: Path | None = None  # validation/good (thresholds) and the labelled test split (the guard)
    test_roots: list[Path] = field(default_factory=list)  # more labelled test splits (e.g. before a drift)
    feedback_dir: Path | None = None  # default <banks>/.feedback
    recall_dir: Path | None = None  # default <banks>/.recall
    redis_url: str | None = None  # recall statistics from Redis (else the replicas' files)
    half_life_days: float = 7.0
    size: int | None = None  # the bound, vectors per member; default: GROWTH x the built version's
    holdout: float = 0.3
    confirmations: int = 2  # reviewers needed for a candidate that scores above the threshold
    publish: bool = True
    force: bool = False
    tolerance: float = 0.01
    keep: int = 5
    now: float | None = None
    device: str = "cpu"
    batch_size: int = 8
    progress: bool = True


@dataclass
class MemberChange:
    member: str
    before: int
    kept: int
    added: int

    @property
    def forgotten(self) -> int:
        return self.before - self.kept


@dataclass
class RefreshReport:
    category: str
    parent: str
    version: str
    published: bool
    refused: str | None
    members: list[MemberChange]
    used: list[str]
    held_out: list[str]
    held_back: dict[str, str]  # decision id -> why
    before: dict[str, bankfmt.EvaluationRecord] = field(default_factory=dict)  # test root -> the parent's
    after: dict[str, bankfmt.EvaluationRecord] = field(default_factory=dict)  # -> the new version's
    thresholds: tuple[float, float] = (0.0, 0.0)  # image before, after

    def lines(self) -> list[str]:
        out = [f"{self.category}: {self.parent} -> {self.version}"]
        for m in self.members:
            out.append(
                f"  {m.member}: {m.before} vectors -> {m.kept + m.added} "
                f"(kept {m.kept}, forgot {m.forgotten}, added {m.added})"
            )
        out.append(
            f"  candidates: {len(self.used)} joined the bank, {len(self.held_out)} set the thresholds, "
            f"{len(self.held_back)} held back"
        )
        out += [f"    held back {ident}: {why}" for ident, why in sorted(self.held_back.items())]
        out.append(f"  image threshold {self.thresholds[0]:.4g} -> {self.thresholds[1]:.4g}")
        for root, before in self.before.items():
            out.append(f"  test split of {root}: {self.parent} -> {self.version}")
            after = self.after[root]
            for key in ("image_auroc", "pixel_auroc", "au_pro", "false_reject_rate", "miss_rate"):
                b, a = getattr(before, key), getattr(after, key)
                out.append(
                    f"    {key}: {'-' if b is None else f'{b:.4f}'} -> {'-' if a is None else f'{a:.4f}'}"
                )
        out.append(
            f"  published {self.version}"
            if self.published
            else f"  NOT published: {self.refused or 'publishing not asked'}; the active version stays {self.parent}"
        )
        return out


def split_holdout(ids: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """(fit, held out): the held-out share chosen by each id's hash, so a part's side never depends on the
    order of arrival; at least one of each when there are two or more."""
    ranked = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    n_out = round(fraction * len(ranked))
    if len(ranked) >= 2:
        n_out = min(max(n_out, 1), len(ranked) - 1)
    return sorted(ranked[n_out:]), sorted(ranked[:n_out])


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def recall_of(req: RefreshRequest, scorer: BankScorer) -> RecallStats:
    m = scorer.bank.manifest
    sizes = [len(ix) for ix in scorer.bank.indices]
    if req.redis_url:
        from patchbank import active

        return read_redis(active.connect(req.redis_url), m.category, m.version, sizes)
    return merged_files(req.recall_dir or req.banks / ".recall", m.category, m.version, sizes)


def choose(
    old: np.ndarray, new: np.ndarray, retention: np.ndarray, size: int, device: str, progress: bool
) -> np.ndarray:
    """Indices into old + new (stacked) of the ``size`` vectors kept (:func:`weighted_k_center`)."""
    import torch

    from patchbank.coreset import weighted_k_center

    union = torch.from_numpy(np.ascontiguousarray(np.concatenate([old, new]), dtype=np.float32)).to(device)
    weights = torch.from_numpy(np.concatenate([retention, np.ones(len(new))]))
    return weighted_k_center(union, weights, min(size, len(union)), progress=progress)


def refresh_bank(req: RefreshRequest) -> RefreshReport:
    from patchbank_builder.publish import publish_version

    if not 0 < req.holdout < 1:
        raise InputError(f"holdout must be in (0, 1), got {req.holdout}")
    now = time.time() if req.now is None else req.now
    scorer = load_scorer(req.banks, req.category, device=req.device)
    m = scorer.bank.manifest
    used_before = set(m.refresh.candidates) if m.refresh else set()
    candidates = [
        c
        for c in read_candidates(req.feedback_dir or req.banks / ".feedback", req.category)
        if c.decision_id not in used_before
    ]
    if not candidates:
        raise DataError(f"no new confirmed-good parts of {req.category} to refresh its bank with")

    prepared: dict[str, Prepared] = {}
    held_back: dict[str, str] = {}
    for c in candidates:
        if c.disputed_by:
            held_back[c.decision_id] = f"said to be defective by {', '.join(sorted(c.disputed_by))}"
            continue
        try:
            prepared[c.decision_id] = c.sample().prepare(scorer.image_size)
        except (OSError, InputError) as exc:
            held_back[c.decision_id] = f"its files cannot be read: {exc}"
    ids = list(prepared)
    # each candidate's features (per member) and patches on the part, extracted once: scored here, then
    # added to the bank or used for the thresholds
    feats: dict[str, list[np.ndarray]] = {}
    parts: dict[str, np.ndarray | None] = {}
    scores: dict[str, float] = {}
    for s in range(0, len(ids), req.batch_size):
        batch = ids[s : s + req.batch_size]
        f, keep = scorer.features_and_parts([prepared[i] for i in batch])
        for j, (ident, score) in enumerate(zip(batch, scorer.score_features(f, keep).image, strict=True)):
            feats[ident], parts[ident], scores[ident] = (
                [x[j] for x in f],
                None if keep is None else keep[j],
                score,
            )
    for c in candidates:
        if c.decision_id not in prepared:
            continue
        c.score = float(scores[c.decision_id])
        if m.thresholds.decide(c.score) and len(c.confirmed_by) < req.confirmations:
            held_back[c.decision_id] = (
                f"scores {c.score:.4g} above the threshold {m.thresholds.image:.4g}, confirmed by "
                f"{len(c.confirmed_by)} of the {req.confirmations} reviewers needed"
            )
    accepted = [i for i in ids if i not in held_back]
    if len(accepted) < 2:
        raise DataError(
            f"{len(accepted)} usable confirmed-good part(s) of {req.category}: a refresh needs 2 or more "
            f"(one to add, one to check the thresholds on); held back: {held_back or 'none'}"
        )
    fit_ids, out_ids = split_holdout(accepted, req.holdout)

    new_feats, _ = stacked(feats, parts, fit_ids)
    stats = recall_of(req, scorer)
    retention = stats.retention(now, req.half_life_days * DAY_S, epoch(m.created_at))
    indices, members, changes, bounds = [], [], [], []
    for k, (member, index) in enumerate(zip(m.members, scorer.bank.indices, strict=True)):
        new = new_feats[k].reshape(-1, new_feats[k].shape[2])
        size = req.size or (m.refresh.bound[k] if m.refresh else GROWTH * len(index))
        bounds.append(size)
        rows = choose(index.vectors, new, retention[k], size, req.device, req.progress)
        union = np.concatenate([index.vectors, new])
        kept = int((rows < len(index)).sum())
        changes.append(MemberChange(member.name, len(index), kept, len(rows) - kept))
        indices.append(PatchIndex(union[rows], rows, member.index_kind, req.device))
        coreset = member.coreset.model_copy(update={"n_patches": len(union), "size": len(rows)})
        members.append(member.model_copy(update={"coreset": coreset}))

    # thresholds (and the fusion) from held-out goods: the held-out candidates and validation/good
    val_feats, val_keep = stacked(feats, parts, out_ids)
    source = f"{len(out_ids)} held-out confirmed-good parts"
    if req.data_root is not None and has_split(req.data_root, req.category, "validation"):
        refs = list_samples(req.data_root, req.category, "validation", kinds=["good"])
        more, keep = extract_all(
            scorer.extractors, refs, req.batch_size, req.progress, part_finder(scorer.scoring)
        )
        val_feats = [np.concatenate([a, b]) for a, b in zip(val_feats, more, strict=True)]
        val_keep = None if keep is None or val_keep is None else np.concatenate([val_keep, keep])
        source += f" and {len(refs)} validation goods"
    held = held_out_scores(indices, val_feats, scorer.scoring, val_keep)
    fusion = None
    if m.fusion is not None:
        fusion = fit_fusion(
            m.fusion.rule,
            np.stack([h.image for h in held]),
            np.stack([h.maps for h in held]),
            source,
            options=m.fusion.options,
        )
    final = fuse(fusion, held)
    score = score_stats(source, final.image, final.maps.reshape(len(final.maps), -1).max(axis=1))
    from patchbank_builder.build import new_member

    members = [
        new_member(e, ix, mem.index_file, mem.coreset, h)
        for e, ix, mem, h in zip(scorer.extractors, indices, members, held, strict=True)
    ]
    record = bankfmt.RefreshRecord(
        candidates=sorted(used_before | set(fit_ids) | set(out_ids)),
        added=fit_ids,
        held_out=out_ids,
        held_back=sorted(held_back),
        half_life_days=req.half_life_days,
        size=[len(ix) for ix in indices],
        bound=bounds,
        confirmations=req.confirmations,
        recalled=[int((c > 0).sum()) for c in stats.counts],
        auto_accepted=sorted(
            c.decision_id for c in candidates if c.auto_accept_below is not None and c.decision_id in accepted
        ),
        auto_accept_below=sorted(
            {c.auto_accept_below for c in candidates if c.auto_accept_below is not None}
        ),
        at=bankfmt.now_utc(),
    )
    manifest = m.model_copy(
        update={
            "members": members,
            "fusion": fusion,
            "score_stats": score,
            "thresholds": default_thresholds(score),
            "calibration": None,
            "evaluation": None,
            "parent": m.version,
            "refresh": record,
            "created_at": bankfmt.now_utc(),
        }
    )
    if m.calibration is not None and m.calibration.target_frr is not None:
        manifest = calibrate_target_frr(manifest, m.calibration.target_frr)

    # the guard: both versions on the same labelled test splits, the new one no worse beyond the tolerance
    before: dict[str, bankfmt.EvaluationRecord] = {}
    after: dict[str, bankfmt.EvaluationRecord] = {}
    worse: list[str] = []
    new_scorer = BankScorer(bankfmt.Bank(manifest, indices, Path()), scorer.extractors)
    roots = ([req.data_root] if req.data_root is not None else []) + list(req.test_roots)
    for root in dict.fromkeys(roots):
        if not has_split(root, req.category, "test"):
            continue
        test = list_samples(root, req.category, "test")
        new_eval, _ = evaluate_scored(new_scorer, test, req.progress)
        old_eval, _ = evaluate_scored(scorer, test, req.progress)
        if manifest.evaluation is None:  # the version records the first split's figures
            manifest.evaluation = new_eval.record()
        before[str(root)], after[str(root)] = old_eval.record(), new_eval.record()
        worse += [f"{w} on {root}" for w in after[str(root)].worse_than(before[str(root)], req.tolerance)]

    def write_indices(directory: Path) -> None:
        for index, member in zip(indices, manifest.members, strict=True):
            index.save(directory / member.index_file)

    written = bankfmt.write_version(req.banks, manifest, write_indices, activate=False)
    published, refused = False, None
    if worse and not req.force:
        refused = (
            f"worse than {m.version} beyond {req.tolerance} on the same test data ({'; '.join(worse)}); "
            "--force publishes it anyway"
        )
    elif req.publish:  # compared above on the same data, not on the figures each version was built with
        publish_version(
            req.banks, req.category, written.version, req.redis_url, True, req.tolerance, req.keep
        )
        published = True
    return RefreshReport(
        category=req.category,
        parent=m.version,
        version=written.version,
        published=published,
        refused=refused,
        members=changes,
        used=fit_ids,
        held_out=out_ids,
        held_back=held_back,
        before=before,
        after=after,
        thresholds=(m.thresholds.image, written.thresholds.image),
    )


def stacked(
    feats: dict[str, list[np.ndarray]], parts: dict[str, np.ndarray | None], ids: Sequence[str]
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The candidates ``ids``' features as each member's (N, 784, D) and their (N, 784) patches on the part
    (None when the bank scores every patch)."""
    members = [np.stack([feats[i][k] for i in ids]) for k in range(len(feats[ids[0]]))]
    keep = None if parts[ids[0]] is None else np.stack([parts[i] for i in ids])  # type: ignore[misc]
    return members, keep
