"""``patchbank rotation``: does a 3D-only bank need its test clouds aligned with its prototypes?

Per category, the synthetic Real3D-AD generator (:mod:`patchbank_synthetic.real3d`) writes the same seed twice:
once with every cloud as generated (``aligned``) and once with every cloud in a random pose (a uniformly
random rotation and a shift). Both hold the same clouds, defects and noise; only the pose differs. One bank is
built from the aligned prototypes and evaluated on both test sets, exactly as ``patchbank evaluate`` does; the
figure is the object AUROC on each and their difference. ``point-fpfh`` registers nothing (centroid-oriented
normals make its FPFH rotation invariant, :mod:`patchbank.points.features`), so the difference stays within
what the voxel grid's and the centre sampling's dependence on the pose leaves: the check is at most
``TOLERANCE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from patchbank.bank import load_bank
from patchbank.points.data import TEST, list_point_samples
from patchbank.points.scorer import load_point_scorer
from patchbank_builder.build import BuildRequest, build_bank
from patchbank_builder.evaluate import Evaluation
from patchbank_builder.points import evaluate_points
from patchbank_synthetic.real3d import DEFAULT_CATEGORIES, DEFAULT_POINTS, generate

TOLERANCE = 0.02  # the largest object-AUROC difference between the aligned and the random-pose test sets
METHOD = "point-fpfh"


@dataclass
class RotationConfig:
    root: Path
    categories: Sequence[str] = DEFAULT_CATEGORIES
    seed: int = 0
    n_test: int = 20
    points: int = DEFAULT_POINTS
    progress: bool = True


class PoseFigures(BaseModel):
    object_auroc: float
    point_auroc: float
    au_pro: float
    false_reject_rate: float

    @classmethod
    def of(cls, ev: Evaluation) -> PoseFigures:
        return cls(
            object_auroc=ev.image_auroc,
            point_auroc=ev.pixel_auroc,
            au_pro=ev.au_pro,
            false_reject_rate=ev.false_reject_rate,
        )


class RotationResult(BaseModel):
    category: str
    seed: int
    n_test: int
    aligned: PoseFigures
    random: PoseFigures

    @property
    def difference(self) -> float:
        """Object AUROC on random poses minus on aligned ones."""
        return self.random.object_auroc - self.aligned.object_auroc

    def holds(self) -> bool:
        return abs(self.difference) <= TOLERANCE


def rotation_result(cfg: RotationConfig, category: str) -> RotationResult:
    """Write both poses of one category, build the bank on the aligned prototypes, evaluate it on both."""
    roots = {pose: cfg.root / f"{pose}-seed{cfg.seed}" for pose in ("aligned", "random")}
    for pose, root in roots.items():
        generate(
            root, [category], n_test=cfg.n_test, points=cfg.points, seed=cfg.seed, pose=pose, progress=False
        )  # type: ignore[arg-type]
    banks = cfg.root / "banks"
    build_bank(
        BuildRequest(
            category=category,
            data_root=roots["aligned"],
            banks=banks,
            method=METHOD,
            evaluate=False,
            progress=cfg.progress,
        )
    )
    scorer = load_point_scorer(load_bank(banks, category))
    figures = {
        pose: PoseFigures.of(evaluate_points(scorer, list_point_samples(root, category, TEST), cfg.progress))
        for pose, root in roots.items()
    }
    return RotationResult(category=category, seed=cfg.seed, n_test=cfg.n_test, **figures)


def render(results: Sequence[RotationResult]) -> str:
    """The figure as a text table: per category and pose, the object and point figures, then the differences."""
    rows = [("category", "pose", "object AUROC", "point AUROC", "AU-PRO", "FRR")]
    for r in results:
        for pose in ("aligned", "random"):
            f: PoseFigures = getattr(r, pose)
            rows.append(
                (
                    r.category,
                    pose,
                    f"{f.object_auroc:.3f}",
                    f"{f.point_auroc:.3f}",
                    f"{f.au_pro:.3f}",
                    f"{f.false_reject_rate:.3f}",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("-" * len(lines[0]))
    for r in results:
        verdict = "ok" if r.holds() else "FAILS"
        lines.append(
            f"{r.category}: object AUROC random - aligned = {r.difference:+.3f} (|difference| <= {TOLERANCE}: {verdict}; "
            f"seed {r.seed}, {r.n_test} test clouds per kind, one bank built on the aligned prototypes)"
        )
    return "\n".join(lines)


def run_rotation(cfg: RotationConfig) -> list[RotationResult]:
    results = [rotation_result(cfg, c) for c in cfg.categories]
    print(render(results))
    return results
