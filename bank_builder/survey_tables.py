"""The survey's tables as people read them: printed, and written as survey.md, survey.csv and survey.json
(:class:`patchbank_builder.survey.Survey`, assembled from its cells)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from patchbank.files import write_atomic
from patchbank_builder.survey import MEASURED, Survey


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _grid(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]


def render_text(survey: Survey) -> str:
    """The tables as fixed-width text: a row per method (published rows marked [n]), a column per
    category, the mean last; then the rows' notes, the sources and the survey's notes."""
    marks = {short: i for i, short in enumerate(survey.references, 1)}
    out: list[str] = []
    for table in survey.tables:
        rows = [["method", *survey.categories, "Mean"]]
        for r in table.rows:
            label = r.method if r.source == MEASURED else f"{r.method} [{marks[r.source]}]"
            rows.append([label, *(_fmt(r.values[c]) for c in survey.categories), _fmt(r.mean)])
        lines = _grid(rows)
        out += [table.title, lines[0], "-" * len(lines[0]), *lines[1:]]
        out += [f"  {r.method}: {r.note}" for r in table.rows if r.note]
        out.append("")
    out += [f"[{marks[short]}] {short}: {src.cite()}" for short, src in survey.references.items()]
    return "\n".join(out + survey.notes)


def render_markdown(survey: Survey) -> str:
    out = [f"# Survey of {survey.data_root}", "", f"Banks: {survey.banks}; made {survey.created_at}.", ""]
    for table in survey.tables:
        out += [f"## {table.title}", ""]
        head = ["Method", "Source", *survey.categories, "Mean"]
        out += [
            "| " + " | ".join(head) + " |",
            "|" + "|".join([":---", ":---"] + ["---:"] * (len(head) - 2)) + "|",
        ]
        for r in table.rows:
            cells = [r.method, r.source, *(_fmt(r.values[c]) for c in survey.categories), _fmt(r.mean)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        if row_notes := [f"- {r.method}: {r.note}" for r in table.rows if r.note]:
            out += [*row_notes, ""]
    if survey.references:
        out += ["## Sources", ""] + [
            f"- **{short}**: {src.cite()}" for short, src in survey.references.items()
        ]
        out.append("")
    return "\n".join(out + [f"{n}  " for n in survey.notes]) + "\n"


def render_csv(survey: Survey) -> str:
    """One row per metric x method: metric, method, source, each category, mean (full precision)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["metric", "method", "source", *survey.categories, "mean"])
    for table in survey.tables:
        for r in table.rows:
            figs = [r.values[c] for c in survey.categories] + [r.mean]
            w.writerow([table.metric, r.method, r.source, *("" if v is None else repr(v) for v in figs)])
    return buf.getvalue()


def write_survey(survey: Survey, out: Path) -> dict[str, Path]:
    """survey.md, survey.csv and survey.json in ``out``, each written atomically."""
    files = {
        "survey.md": render_markdown(survey),
        "survey.csv": render_csv(survey),
        "survey.json": survey.model_dump_json(indent=2) + "\n",
    }
    paths = {}
    for name, text in files.items():
        write_atomic(out / name, text)
        paths[name] = out / name
    return paths
