"""The evaluation report: ``evaluate --report`` on the demo bank writes one self-contained HTML file; parsed
here, it holds the figures, the per-defect table, the curves, the score distributions and the galleries."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from patchbank.cli import run_command
from patchbank_builder.build import BuildResult
from patchbank_builder.cli import EVALUATE
from tests.conftest import CATEGORY


class Page(HTMLParser):
    """The report's images (alt text and decoded PNG), its table rows and its section titles."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, Image.Image]] = []
        self.rows: list[list[str]] = []
        self.titles: list[str] = []
        self._cells: list[str] | None = None
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            src = a["src"] or ""
            assert src.startswith("data:image/png;base64,"), "the report embeds its images"
            self.images.append(
                (a["alt"] or "", Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
            )
        elif tag == "tr":
            self._cells = []
        elif tag in ("td", "th", "h2"):
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._cells is not None:
            self.rows.append(self._cells)
            self._cells = None
        elif tag in ("td", "th", "h2"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "h2":
            self.titles.append(data)
        elif self._in in ("td", "th") and self._cells is not None:
            self._cells.append(data)


def test_evaluate_writes_a_self_contained_report(
    fpfh_build: tuple[Path, BuildResult], demo_root: Path, tmp_path: Path
) -> None:
    banks, built = fpfh_build
    out = tmp_path / "report"
    argv = ["--category", CATEGORY, "--data-root", str(demo_root), "--banks", str(banks), "--quiet"]
    assert run_command(EVALUATE, [*argv, "--report", str(out), "--device", "cpu"]) == 0
    page = Page()
    page.feed((out / "index.html").read_text())
    alts = [alt for alt, _ in page.images]
    assert {"ROC curves", "PRO curve", "scores"} <= set(alts)
    assert any(t.startswith("Worst misses") for t in page.titles)
    assert any(t.startswith("Worst false alarms") for t in page.titles)
    gallery = [
        (alt, im)
        for alt, im in page.images
        if alt.split()[0] in {"good", "hole", "bump", "crack", "cut", "stain"}
    ]
    goods = [im for alt, im in gallery if alt.startswith("good")]
    assert goods and len(gallery) > len(goods), alts  # both galleries have parts
    assert all(im.width >= 224 and im.height >= 224 for _, im in gallery)  # an overlay of the 224 map, a bar
    kinds = {row[0] for row in page.rows}
    assert built.evaluation is not None and set(built.evaluation.per_defect) <= kinds
    figures = dict(row[:2] for row in page.rows if len(row) >= 2)
    assert figures["I-AUROC"] == f"{built.evaluation.image_auroc:.3f}"
