"""``evaluate --report`` and ``build-bank --report``: the evaluation report (:mod:`patchbank.report`) written
as ``DIR/index.html``."""

from __future__ import annotations

from pathlib import Path

from patchbank.report import REPORT_FILE, Scored, render_report
from patchbank_builder.evaluate import Evaluation


def write_report(out: Path, ev: Evaluation, scored: Scored, pixel_threshold: float) -> Path:
    """Write ``out/index.html`` and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_FILE
    title = f"{ev.category} {ev.bank_version} ({ev.method})"
    path.write_text(render_report(title, ev, scored, pixel_threshold), encoding="utf-8")
    return path
