"""``patchbank drift``: a line that drifts, and a living bank that follows it, measured end to end.

For each pair of seeds (two independently generated datasets): the demo generator writes the old setting
(seed A) and the new one (seed B, ``--shift``: the part's material and texture change, the geometry does not);
a bank is built on the old setting and calibrated to a target false-reject rate; a live service (loopback)
scores ``confirmed`` good parts of the new setting as a line sends them, and two reviewers confirm each as good
through ``POST /feedback`` (the service keeps their files); ``refresh-bank`` then builds, evaluates and
publishes the refreshed version. Printed: the false-alarm rate on the new setting's good test parts before and
after, against the calibrated target and its interval; the miss rate and I-AUROC on both settings' test splits
before and after; and whether the acceptance holds (the false-alarm rate after within the interval, I-AUROC on
both settings within 0.01 of the frozen bank's on the old setting).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from patchbank.bank import EvaluationRecord
from patchbank.data import list_samples
from patchbank_builder.build import BuildRequest, build_bank
from patchbank_builder.refresh import RefreshReport, RefreshRequest, refresh_bank
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from patchbank_synthetic.demo_data import generate

REVIEWERS = ("operator", "supervisor")


@dataclass
class DriftConfig:
    root: Path
    category: str = "puck"
    seeds: tuple[tuple[int, int], ...] = ((11, 12), (21, 22))
    shift: float = 0.5
    n_train: int = 40
    n_validation: int = 10
    n_test: int = 10
    size: int = 224
    confirmed: int = 40
    target_frr: float = 0.05
    half_life_days: float = 7.0
    progress: bool = True


@dataclass
class DriftResult:
    seeds: tuple[int, int]
    target: float
    scored_ng: int  # of the confirmed parts, the false alarms the line saw before the refresh
    before: dict[str, EvaluationRecord]  # "old" / "new" test split -> the frozen bank's evaluation
    after: dict[str, EvaluationRecord]  # -> the refreshed bank's (both as refresh-bank's guard measured them)
    report: RefreshReport
    seconds: float

    def holds(self) -> tuple[bool, bool]:
        """(false-alarm rate after within the target's interval, I-AUROC within 0.01 on both settings)."""
        lo, hi = self.after["new"].false_reject_ci
        floor = self.before["old"].image_auroc - 0.01
        return lo <= self.target <= hi, all(self.after[s].image_auroc >= floor for s in ("old", "new"))


def _upload(ref: object) -> dict[str, tuple[str, bytes]]:
    return {"rgb": ("rgb.png", ref.rgb.read_bytes()), "xyz": ("xyz.tiff", ref.xyz.read_bytes())}  # type: ignore[attr-defined]


def run_pair(cfg: DriftConfig, seeds: tuple[int, int]) -> DriftResult:
    start = time.perf_counter()
    work = cfg.root / f"seeds-{seeds[0]}-{seeds[1]}"
    roots = {"old": work / "old", "new": work / "new"}
    for (name, root), seed in zip(roots.items(), seeds, strict=True):
        generate(
            root,
            [cfg.category],
            cfg.n_train,
            cfg.n_validation,
            cfg.n_test,
            (cfg.size, cfg.size),
            seed,
            progress=False,
            shift=cfg.shift if name == "new" else 0.0,
        )
    banks = work / "banks"
    build_bank(
        BuildRequest(
            category=cfg.category,
            data_root=roots["old"],
            banks=banks,
            calibrate=True,
            target_frr=cfg.target_frr,
            progress=cfg.progress,
        )
    )

    line = list_samples(roots["new"], cfg.category, "train")[: cfg.confirmed]
    scored_ng = 0
    settings = ServiceSettings(banks=banks, device="cpu", recent_samples=4)
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=120) as client:
        for ref in line:
            r = client.post("/score", data={"category": cfg.category, "map": "none"}, files=_upload(ref))
            r.raise_for_status()
            ng = bool(r.json()["is_anomalous"])
            scored_ng += ng
            recent = client.get("/recent", params={"category": cfg.category, "limit": 1}).json()
            ident = recent["decisions"][0]["id"]
            for who in REVIEWERS:
                verdict = "false_alarm" if ng else "confirmed"
                client.post(
                    "/feedback", json={"decision_id": ident, "verdict": verdict, "who": who}
                ).raise_for_status()
    report = refresh_bank(
        RefreshRequest(
            category=cfg.category,
            banks=banks,
            data_root=roots["new"],
            test_roots=[roots["old"]],
            half_life_days=cfg.half_life_days,
            progress=cfg.progress,
        )
    )
    before = {name: report.before[str(root)] for name, root in roots.items()}
    after = {name: report.after[str(root)] for name, root in roots.items()}
    return DriftResult(seeds, cfg.target_frr, scored_ng, before, after, report, time.perf_counter() - start)


def table(results: list[DriftResult], confirmed: int) -> str:
    head = (
        "| seeds (old, new) | false alarms on the line, of the confirmed | new goods: false-alarm rate "
        "before -> after (95% CI after) | target | old: I-AUROC before -> after | new: I-AUROC before -> after "
        "| old: miss rate before -> after | new: miss rate before -> after | vectors kept / added (per member) "
        "| published | FAR in interval | I-AUROC within 0.01 |"
    )
    rows = [head, "|" + "---|" * 12]
    for r in results:
        b, a = r.before, r.after
        lo, hi = a["new"].false_reject_ci
        in_ci, auroc_ok = r.holds()
        members = ", ".join(f"{m.member} {m.kept}/{m.added}" for m in r.report.members)
        rows.append(
            f"| {r.seeds[0]}, {r.seeds[1]} | {r.scored_ng} of {confirmed} "
            f"| {b['new'].false_reject_rate:.3f} -> {a['new'].false_reject_rate:.3f} ({lo:.3f}-{hi:.3f}) "
            f"| {r.target:.3f} | {b['old'].image_auroc:.3f} -> {a['old'].image_auroc:.3f} "
            f"| {b['new'].image_auroc:.3f} -> {a['new'].image_auroc:.3f} "
            f"| {b['old'].miss_rate:.3f} -> {a['old'].miss_rate:.3f} "
            f"| {b['new'].miss_rate:.3f} -> {a['new'].miss_rate:.3f} | {members} "
            f"| {'yes' if r.report.published else 'no'} | {'yes' if in_ci else 'NO'} | {'yes' if auroc_ok else 'NO'} |"
        )
    return "\n".join(rows)


def run_drift(cfg: DriftConfig) -> list[DriftResult]:
    results = [run_pair(cfg, seeds) for seeds in cfg.seeds]
    for r in results:
        print("\n".join(r.report.lines()))
        print(f"({r.seconds:.0f} s)\n")
    print(table(results, cfg.confirmed))
    return results
