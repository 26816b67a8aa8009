"""The evaluation report: one self-contained HTML page (figures and images embedded) a quality engineer can
open anywhere, mail or archive with the bank.

It holds the figures and the per-defect table ``evaluate`` prints, the image-level ROC curves, the PRO curve
up to the false-positive rate AU-PRO integrates to, the score distributions of good and defective test parts
against the image threshold, and galleries of the worst misses and false alarms as overlays (the map on the
part, the same picture the service's ``map=overlay`` answers).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from patchbank.bank import EvaluationRecord
from patchbank.data import GOOD, SampleRef, read_rgb
from patchbank.metrics import pro_curve
from patchbank.overlay import overlay_png
from patchbank.regions import find_regions

PRO_LIMIT = 0.3  # AU-PRO integrates the PRO curve up to this false-positive rate (MVTec 3D-AD, BTF)
GALLERY = 6  # parts per gallery
REPORT_FILE = "index.html"


@dataclass(frozen=True)
class Scored:
    """What evaluation computed per test sample (for the report): (N,) image scores, (N, S, S) maps at the
    model's resolution and the (N, S, S) bool ground truth, in the order of ``refs``."""

    refs: Sequence[SampleRef]
    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray


def render_report(title: str, ev: EvaluationRecord, scored: Scored | None, pixel_threshold: float) -> str:
    """The report as one HTML page. Without ``scored`` (the maps) it is drawn from the per-part scores a
    bank records with its evaluation: figures, table, ROC curves and distributions, no PRO curve nor
    galleries (the console's page for a bank, which costs no scoring)."""
    import matplotlib

    matplotlib.use("Agg")  # no screen: render to memory
    kinds = np.array([s.kind for s in ev.scores])
    scores = np.array([s.image_score for s in ev.scores], dtype=np.float64)
    curves = [_img(_roc_figure(kinds, scores), "ROC curves")]
    sections = [_summary(ev), _per_defect(ev)]
    if scored is not None:
        curves.append(_img(_pro_figure(scored.masks, scored.maps), "PRO curve"))
    sections += [
        "<h2>Curves</h2>" + "".join(curves),
        "<h2>Score distributions</h2>" + _img(_distribution_figure(kinds, scores, ev.threshold), "scores"),
    ]
    if scored is not None:
        sections += [
            _gallery(
                "Worst misses (defective parts, lowest scores)",
                _worst(kinds != GOOD, scores, low=True),
                scored,
                ev.threshold,
                pixel_threshold,
            ),
            _gallery(
                "Worst false alarms (good parts, highest scores)",
                _worst(kinds == GOOD, scores, low=False),
                scored,
                ev.threshold,
                pixel_threshold,
            ),
        ]
    else:
        sections.append(
            "<p>The PRO curve and the galleries of misses and false alarms need the test parts' maps: "
            "<code>patchbank evaluate --category C --report DIR</code> writes the full report.</p>"
        )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Patchbank report: {html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Patchbank evaluation: {html.escape(title)}</h1>" + "".join(sections) + "</body></html>"
    )


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
    "table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}"
    "th:first-child,td:first-child{text-align:left}figure{display:inline-block;margin:.5em;text-align:center}"
    "figure img{max-width:100%}.gallery figure{width:250px}.ng{color:#b00}.ok{color:#070}"
)


def _summary(ev: EvaluationRecord) -> str:
    ci = ev.false_reject_ci
    frr = f"{ev.false_reject_rate:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
    rows = [
        ("I-AUROC", f"{ev.image_auroc:.3f}"),
        ("P-AUROC", f"{ev.pixel_auroc:.3f}"),
        ("AU-PRO (FPR &le; 0.3)", f"{ev.au_pro:.3f}"),
        ("test parts", str(ev.n_test)),
        ("image threshold", f"{ev.threshold:.4g}"),
        ("false-reject rate (test goods)", frr),
        ("miss rate (test defects)", f"{ev.miss_rate:.3f}"),
    ]
    if ev.calibration:
        rows.append(("calibration", html.escape(ev.calibration)))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h2>Figures</h2><table class='summary'>{body}</table>"


def _per_defect(ev: EvaluationRecord) -> str:
    head = "<tr><th>kind</th><th>n</th><th>I-AUROC</th><th>P-AUROC</th><th>AU-PRO</th></tr>"
    rows = [
        f"<tr><td>{html.escape(kind)}</td><td>{f.n}</td><td>{f.image_auroc:.3f}</td>"
        f"<td>{f.pixel_auroc:.3f}</td><td>{f.au_pro:.3f}</td></tr>"
        for kind, f in ev.per_defect.items()
    ]
    total = (
        f"<tr><th>all</th><th>{ev.n_test}</th><th>{ev.image_auroc:.3f}</th><th>{ev.pixel_auroc:.3f}</th>"
        f"<th>{ev.au_pro:.3f}</th></tr>"
    )
    return f"<h2>Per defect kind</h2><table class='per-defect'>{head}{''.join(rows)}{total}</table>"


def _png(fig: object) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return buf.getvalue()


def _img(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode()
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>{cap}</figure>"


def _roc_figure(kinds: np.ndarray, scores: np.ndarray) -> bytes:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 4.5))
    good = kinds == GOOD
    for kind in [*sorted(set(kinds) - {GOOD}), "all"]:
        sel = np.ones_like(good) if kind == "all" else good | (kinds == kind)
        fpr, tpr, _ = roc_curve((~good[sel]).astype(int), scores[sel])
        ax.plot(fpr, tpr, lw=2.5 if kind == "all" else 1.2, label=kind)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false-positive rate (good parts)", ylabel="true-positive rate", title="image-level ROC")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _pro_figure(masks: np.ndarray, maps: np.ndarray) -> bytes:
    import matplotlib.pyplot as plt

    fprs, pros = pro_curve(masks, maps)
    keep = fprs <= PRO_LIMIT
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot(fprs[keep], pros[keep], lw=2)
    ax.set(
        xlim=(0, PRO_LIMIT),
        ylim=(0, 1.02),
        xlabel="false-positive rate (pixels)",
        ylabel="per-region overlap",
        title=f"PRO curve (AU-PRO integrates to {PRO_LIMIT})",
    )
    return _png(fig)


def _distribution_figure(kinds: np.ndarray, scores: np.ndarray, threshold: float) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.linspace(min(scores.min(), threshold), max(scores.max(), threshold), 30)
    ax.hist(scores[kinds == GOOD], bins=bins, alpha=0.6, label="good", color="tab:green")
    ax.hist(scores[kinds != GOOD], bins=bins, alpha=0.6, label="defective", color="tab:red")
    ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.3g}")
    ax.set(xlabel="image score", ylabel="test parts")
    ax.legend(fontsize=8)
    return _png(fig)


def _worst(which: np.ndarray, scores: np.ndarray, low: bool) -> list[int]:
    idx = np.flatnonzero(which)
    order = idx[np.argsort(scores[idx])]
    return [int(i) for i in (order if low else order[::-1])[:GALLERY]]


def _gallery(title: str, picks: list[int], scored: Scored, threshold: float, pixel_threshold: float) -> str:
    if not picks:
        return f"<h2>{html.escape(title)}</h2><p>none</p>"
    figures = []
    for i in picks:
        ref, amap = scored.refs[i], scored.maps[i]
        side = amap.shape[0]
        image = read_rgb(ref.rgb).resize((side, side), Image.Resampling.BILINEAR)
        png = overlay_png(image, amap, pixel_threshold, find_regions(amap, pixel_threshold))
        score = float(scored.scores[i])
        verdict = "NG" if score > threshold else "OK"
        caption = f"{html.escape(ref.name)}: {score:.3g} <span class='{verdict.lower()}'>{verdict}</span>"
        figures.append(_img(png, f"{ref.kind} {ref.name}", caption))
    return f"<h2>{html.escape(title)}</h2><div class='gallery'>{''.join(figures)}</div>"
