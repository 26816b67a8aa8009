"""``evaluate --all`` and ``compare --all``: the survey's tables over every category of a data root.

A *cell* is one method's figures on one category's test split (I-AUROC, P-AUROC, AU-PRO). Each finished cell
is written at once, atomically, to ``OUT/cells/<method>/<category>.json`` (:class:`Cell`), so a run that stops
resumes where it stopped: a cell on disk is reused while its inputs are unchanged (the category's data digest,
and the bank it stands for, or with ``compare --all`` the build recipe). The tables (one per metric, a row per
method, a column per category, the mean last) are printed and written as ``OUT/survey.md``, ``survey.csv`` and
``survey.json`` (:class:`Survey`), with the published reference rows of :mod:`patchbank_builder.published`.

Where a cell comes from:

- ``evaluate --all``: the category's active bank, when its method is the one surveyed. Its manifest's
  evaluation is used when it was made on this root's test split (the bank's training digest is this root's
  train split's and its evaluation scored exactly this root's test samples); otherwise the bank is evaluated
  now. A category without such a bank gets one built (``build_bank``, made active when the category has none).
- ``compare --all``: every method is built, calibrated and evaluated per category, as ``compare`` does.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from patchbank import bank as bankfmt
from patchbank.bank import EvaluationRecord, Manifest
from patchbank.data import digest, list_samples
from patchbank.errors import BankError, DataError
from patchbank.files import write_atomic
from patchbank.methods import DEFAULT_METHOD, parse_method
from patchbank.points.data import is_point_dataset, list_point_samples, point_digest
from patchbank.scorer import load_scorer
from patchbank.weights import WeightsRequest
from patchbank_builder.build import BuildRequest, build_bank
from patchbank_builder.evaluate import evaluate
from patchbank_builder.options import CompareOptions
from patchbank_builder.points import evaluate_point_version
from patchbank_builder.published import (
    METRICS,
    Metric,
    ReferenceRow,
    Source,
    matching,
    published,
    reference_rows,
)

log = logging.getLogger(__name__)

POINT_METHOD = "point-fpfh"  # a point-cloud root's default method (patchbank.points)
COMPARE_METHODS: tuple[str, ...] = CompareOptions.model_fields["methods"].default
CELLS = "cells"
MEASURED = "measured"
TITLES: dict[Metric, tuple[str, str]] = {  # (RGB + 3D root, point-cloud root)
    "image_auroc": ("I-AUROC", "object AUROC"),
    "pixel_auroc": ("P-AUROC", "point AUROC"),
    "au_pro": ("AU-PRO", "point AU-PRO"),
}
CellSource = Literal["manifest", "evaluated", "built"]


# -- the data root -----------------------------------------------------------------------------------------


def survey_categories(root: Path) -> list[str]:
    """The categories of a data root: its folders with a ``train`` folder (hidden ones aside), sorted.
    DataError when there is none."""
    base = Path(root)
    found = (
        sorted(p.name for p in base.iterdir() if not p.name.startswith(".") and (p / "train").is_dir())
        if base.is_dir()
        else []
    )
    if not found:
        raise DataError(f"no categories under {root}: a category is a folder with a train folder")
    return found


# POINT ROOTS: the one place the survey tells a Real3D-AD-style point-cloud category from an MVTec 3D-AD one
# and reads it (patchbank.points.data, patchbank_builder.points: the point method point-fpfh).


def point_category(root: Path, category: str) -> bool:
    """Whether the category is a Real3D-AD-style point-cloud dataset."""
    return bool(is_point_dataset(Path(root), category))


def default_method(root: Path, category: str) -> str:
    """The method a category is surveyed with when none is given and it has no bank: ``point-fpfh`` for a
    point-cloud category, else the product's default."""
    return POINT_METHOD if point_category(root, category) else DEFAULT_METHOD


def training_digest(root: Path, category: str) -> str:
    """The digest a bank built on this root's train split records (``manifest.training.digest``)."""
    if point_category(root, category):
        return point_digest(list_point_samples(root, category, "train"))
    return digest(list_samples(root, category, "train", kinds=["good"]))


def split_test_names(root: Path, category: str) -> list[str]:
    """The names of the test split's samples, as an evaluation records them (``SampleScore.name``)."""
    if point_category(root, category):
        return [r.name for r in list_point_samples(root, category, "test")]
    return [r.name for r in list_samples(root, category, "test")]


def evaluate_version(req: SurveyRequest, category: str, version: str) -> EvaluationRecord:
    """A bank version evaluated on the category's test split."""
    if point_category(req.data_root, category):
        return evaluate_point_version(req.banks, Path(req.data_root), category, version, req.progress)
    scorer = load_scorer(req.banks, category, version, req.device, req.weights)
    return evaluate(scorer, list_samples(req.data_root, category, "test"), req.progress)


# -- cell inputs -------------------------------------------------------------------------------------------


def data_digest(root: Path, category: str) -> str:
    """sha256 over every file of the category's folder (relative path, size, modification time): a cell's
    data input. File stats, not contents: a rerun over a full MVTec 3D-AD (tens of GB) checks it at once, and a
    file rewritten or replaced still changes it."""
    base = Path(root) / category
    h = hashlib.sha256()
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(base).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def recipe_digest(req: BuildRequest) -> str:
    """sha256 of what a build's figures depend on besides the data (method, options, coreset, index,
    weights, scoring, calibration, camera): ``compare --all`` rebuilds a cell whose recipe changed."""
    keys = ("method", "options", "fusion_options", "scoring", "coreset", "index_kind", "weights")
    keys += ("member_weights", "calibrate", "target_frr", "intrinsics", "evaluate")
    text = repr(sorted((k, _plain(getattr(req, k))) for k in keys))
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """A value as plain, ordered data (models, dataclasses, paths, dicts, sequences)."""
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(mode="json"))
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return sorted((str(k), _plain(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


# -- cells -------------------------------------------------------------------------------------------------


class Cell(BaseModel):
    """One method's figures on one category's test split, and what they were made from."""

    model_config = ConfigDict(extra="forbid")

    method: str
    category: str
    image_auroc: float = Field(description="I-AUROC (object AUROC for a point-cloud category)")
    pixel_auroc: float = Field(description="P-AUROC (point AUROC for a point-cloud category)")
    au_pro: float = Field(description="AU-PRO (point AU-PRO for a point-cloud category)")
    n_test: int = Field(description="test samples evaluated")
    bank: str = Field(description="the bank the figures are of: <category>/<version>")
    source: CellSource = Field(
        description="manifest: the bank's recorded evaluation; evaluated: the bank evaluated by the survey; "
        "built: a bank the survey built (and build-bank evaluated)"
    )
    active: str | None = Field(
        None,
        description="evaluate --all: the category's active bank the cell stands for (None: none of the "
        "method was active, and the survey built one)",
    )
    recipe: str | None = Field(None, description="compare --all: sha256 of the build recipe")
    data_root: str = Field(description="the data root, resolved")
    data_digest: str = Field(description="sha256 of the category's files when the cell was made")
    at: str = Field(description="when the cell was finished, UTC, ISO 8601")

    def figure(self, metric: Metric) -> float:
        return float(getattr(self, metric))


def cell_path(out: Path, method: str, category: str) -> Path:
    """``OUT/cells/<method>/<category>.json``; the method's ``/`` is written ``%2F`` (``rgb%2Ffpfh``)."""
    return Path(out) / CELLS / quote(method, safe="+@-._") / f"{category}.json"


def read_cell(path: Path) -> Cell | None:
    """The cell written at ``path``; None when there is none, or it is unreadable (then recomputed)."""
    if not path.is_file():
        return None
    try:
        return Cell.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        log.warning("%s is unreadable, recomputing it: %s", path, str(exc).splitlines()[0])
        return None


# -- the request and its plan ------------------------------------------------------------------------------


@dataclass
class SurveyRequest:
    data_root: Path
    banks: Path
    out: Path  # cells/, survey.md, survey.csv, survey.json
    methods: tuple[str, ...] | None = None  # None: each category's default (see category_methods)
    build: Callable[[str, str], BuildRequest] | None = None
    """compare --all: the BuildRequest of (method, category); every cell is built with it. None: evaluate
    --all, cells from the categories' banks."""
    fresh: bool = False  # recompute every cell
    device: str = "cpu"
    weights: str | None = None  # evaluate: a bank's moved weights file
    build_weights: WeightsRequest = field(
        default_factory=WeightsRequest
    )  # evaluate --all's builds (--weights)
    progress: bool = True
    on_cell: Callable[[Cell], None] | None = None  # called once each new cell is written
    echo: Callable[[str], None] = field(default=lambda line: tqdm.write(line, file=sys.stderr))


@dataclass
class Task:
    """One cell to have: its method and category, and the inputs a cell on disk must match."""

    method: str
    category: str
    digest: str
    active: Manifest | None  # the category's active bank (evaluate --all)
    recipe: str | None  # compare --all
    done: Cell | None = None  # a finished cell still current

    @property
    def active_ref(self) -> str | None:
        """The active bank this cell stands for: the category's active one when it is of this method."""
        a = self.active
        return f"{a.category}/{a.version}" if a is not None and a.method == self.method else None


def active_manifest(banks: Path, category: str) -> Manifest | None:
    """The manifest of the category's active bank, None without one."""
    version = bankfmt.active_version(banks, category)
    if version is None:
        return None
    return bankfmt.read_manifest(bankfmt.version_dir(banks, category, version))


def category_methods(req: SurveyRequest, category: str, active: Manifest | None) -> tuple[str, ...]:
    """The methods surveyed on a category: those asked for; else ``compare``'s methods (point-fpfh for a
    point-cloud category), or with ``evaluate`` the active bank's method (the default method without one)."""
    if req.methods:
        return tuple(dict.fromkeys(parse_method(m).name for m in req.methods))
    if req.build is not None:
        return (POINT_METHOD,) if point_category(req.data_root, category) else COMPARE_METHODS
    return (active.method,) if active is not None else (default_method(req.data_root, category),)


def current(task: Task, cell: Cell, banks: Path) -> bool:
    """Whether a cell on disk still holds for the task: same method, category and data digest, and the same
    recipe (compare) or the same active bank (evaluate; a bank the survey built must still be there)."""
    if (cell.method, cell.category, cell.data_digest) != (task.method, task.category, task.digest):
        return False
    if task.recipe is not None:
        return cell.recipe == task.recipe
    if cell.recipe is not None or cell.active != task.active_ref:
        return False
    if cell.active is not None:
        return True
    try:
        manifest = bankfmt.read_manifest(
            bankfmt.version_dir(banks, task.category, cell.bank.rpartition("/")[2])
        )
    except BankError:
        return False
    return manifest.method == task.method


def plan(req: SurveyRequest) -> list[Task]:
    """Every (category, method) cell of the survey, categories sorted, with the finished ones found."""
    root = Path(req.data_root)
    categories = survey_categories(root)
    tasks = []
    for category in tqdm(categories, desc="reading categories", disable=not req.progress, leave=False):
        if not (root / category / "test").is_dir():
            req.echo(f"{category}: skipped, no test split")
            continue
        active = active_manifest(req.banks, category) if req.build is None else None
        dig = data_digest(root, category)
        for method in category_methods(req, category, active):
            recipe = recipe_digest(req.build(method, category)) if req.build is not None else None
            task = Task(method, category, dig, active, recipe)
            if not req.fresh:
                cell = read_cell(cell_path(req.out, method, category))
                task.done = cell if cell is not None and current(task, cell, req.banks) else None
            tasks.append(task)
    if not tasks:
        raise DataError(f"no category of {root} has a test split to survey")
    return tasks


# -- computing a cell --------------------------------------------------------------------------------------


def evaluation_applies(manifest: Manifest, root: Path, category: str) -> bool:
    """Whether the manifest's evaluation was made on this root's test split: the bank's training digest is
    this root's train split's, and its evaluation scored exactly this root's test samples (by name; an
    evaluation without its samples' scores cannot be told)."""
    ev = manifest.evaluation
    if ev is None or not ev.scores or training_digest(root, category) != manifest.training.digest:
        return False
    return sorted(split_test_names(root, category)) == sorted(s.name for s in ev.scores)


def new_cell(task: Task, req: SurveyRequest, ev: EvaluationRecord, bank: str, source: CellSource) -> Cell:
    return Cell(
        method=task.method,
        category=task.category,
        image_auroc=ev.image_auroc,
        pixel_auroc=ev.pixel_auroc,
        au_pro=ev.au_pro,
        n_test=ev.n_test,
        bank=bank,
        source=source,
        active=task.active_ref,
        recipe=task.recipe,
        data_root=str(Path(req.data_root).resolve()),
        data_digest=task.digest,
        at=bankfmt.now_utc(),
    )


def built_cell(task: Task, req: SurveyRequest, build: BuildRequest) -> Cell:
    """Build a bank (build-bank evaluates it on the test split) and make its cell."""
    result = build_bank(build)
    if result.evaluation is None:
        raise DataError(f"category {task.category!r}: the bank built has no evaluation (no test split?)")
    cell = new_cell(task, req, result.evaluation, f"{task.category}/{result.manifest.version}", "built")
    if build.activate and task.active is None:  # the bank built is now the category's active one
        cell = cell.model_copy(update={"active": cell.bank})
    return cell


def compute(task: Task, req: SurveyRequest) -> Cell:
    """The task's cell: from the build recipe (compare), else from the category's active bank of the method
    (its recorded evaluation when it applies, else evaluated now), else from a bank built with the defaults."""
    root = Path(req.data_root)
    if req.build is not None:
        return built_cell(task, req, req.build(task.method, task.category))
    active, ref = task.active, task.active_ref
    if active is not None and ref is not None:  # the category's active bank is of this method
        if active.evaluation is not None and evaluation_applies(active, root, task.category):
            return new_cell(task, req, active.evaluation, ref, "manifest")
        ev = evaluate_version(req, task.category, active.version)
        return new_cell(task, req, ev, ref, "evaluated")
    return built_cell(task, req, default_build(task, req, activate=active is None))


def default_build(task: Task, req: SurveyRequest, activate: bool) -> BuildRequest:
    """evaluate --all's build of a missing bank: the method with build-bank's defaults."""
    return BuildRequest(
        category=task.category,
        data_root=Path(req.data_root),
        banks=req.banks,
        method=task.method,
        weights=req.build_weights,
        device=req.device,
        progress=req.progress,
        activate=activate,
    )


def describe(cell: Cell, point: bool = False) -> str:
    """One line per finished cell (``point``: a point-cloud category's metric names)."""
    figs = "  ".join(f"{TITLES[m][point]} {cell.figure(m):.3f}" for m in METRICS)
    return f"{cell.category} {cell.method}: {figs} ({cell.source} {cell.bank})"


# -- the survey --------------------------------------------------------------------------------------------


class SurveyRow(BaseModel):
    method: str
    source: str = Field(description=f"{MEASURED!r} (this survey's cells), or the published source")
    values: dict[str, float | None] = Field(description="per category, null where there is no figure")
    mean: float | None = Field(description="see note and the survey's notes")
    note: str | None = None


class SurveyTable(BaseModel):
    metric: Metric
    title: str
    rows: list[SurveyRow]


class Survey(BaseModel):
    """What ``evaluate --all`` / ``compare --all`` write as survey.json."""

    data_root: str
    banks: str
    categories: list[str]
    methods: list[str]
    created_at: str = Field(description="UTC, ISO 8601")
    tables: list[SurveyTable] = Field(description="one per metric: our rows, then the published ones")
    references: dict[str, Source] = Field(description="the published rows' sources, by their short name")
    notes: list[str]
    cells: list[Cell]


def run_survey(req: SurveyRequest) -> Survey:
    """Plan, compute the missing cells (each written as soon as it is finished), then assemble the tables
    (:mod:`patchbank_builder.survey_tables` renders and writes them)."""
    tasks = plan(req)
    done = sum(t.done is not None for t in tasks)
    if done:
        req.echo(f"resuming: {done} of {len(tasks)} cells done")
    todo = [t for t in tasks if t.done is None]
    for task in tqdm(todo, desc="survey", unit="cell", disable=not req.progress):
        task.done = compute(task, req)
        write_atomic(cell_path(req.out, task.method, task.category), task.done.model_dump_json(indent=2))
        req.echo(describe(task.done, point_category(req.data_root, task.category)))
        if req.on_cell is not None:
            req.on_cell(task.done)
    return assemble(req.data_root, req.banks, [t.done for t in tasks if t.done is not None])


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def assemble(data_root: Path, banks: Path, cells: Sequence[Cell]) -> Survey:
    """The survey's tables from its cells and the published rows that apply."""
    categories = sorted({c.category for c in cells})
    methods = list(dict.fromkeys(c.method for c in cells))
    by_key = {(c.method, c.category): c for c in cells}
    points = [point_category(data_root, c) for c in categories]
    kind = 1 if all(points) else 0
    tables, references = [], {}
    for metric in METRICS:
        title = (
            TITLES[metric][kind]
            if all(points) or not any(points)
            else f"{TITLES[metric][0]} / {TITLES[metric][1]}"
        )
        rows = []
        for method in methods:
            values = {
                c: (cell.figure(metric) if (cell := by_key.get((method, c))) else None) for c in categories
            }
            n = sum(v is not None for v in values.values())
            note = None if n == len(values) else f"mean over its {n} of {len(values)} categories"
            rows.append(
                SurveyRow(
                    method=method,
                    source=MEASURED,
                    values=values,
                    mean=_mean(list(values.values())),
                    note=note,
                )
            )
        for ref in reference_rows(categories, metric):
            references[ref.source.short] = ref.source
            rows.append(_reference(ref))
        tables.append(SurveyTable(metric=metric, title=title, rows=rows))
    return Survey(
        data_root=str(Path(data_root).resolve()),
        banks=str(Path(banks).resolve()),
        categories=categories,
        methods=methods,
        created_at=bankfmt.now_utc(),
        tables=tables,
        references=references,
        notes=notes(categories),
        cells=list(cells),
    )


def _reference(ref: ReferenceRow) -> SurveyRow:
    return SurveyRow(
        method=ref.method, source=ref.source.short, values=ref.values, mean=ref.mean, note=ref.note
    )


def notes(categories: list[str]) -> list[str]:
    """How the Mean column is made, and whether published rows apply."""
    ours = "Mean: a measured row's is over the categories shown."
    ds = matching(categories)
    if ds is None:
        names = " or ".join(d.dataset for d in published())
        return [
            ours,
            f"No published reference rows apply: {', '.join(categories)} are not categories of {names}.",
        ]
    if set(categories) == set(ds.categories):
        theirs = (
            f"A published row's is the mean its source publishes over all {len(ds.categories)} categories."
        )
    else:
        theirs = (
            f"A published row's is over the shown categories (null when one has no published figure); its "
            f"published mean over all {len(ds.categories)} {ds.dataset} categories is in the row's note."
        )
    return [
        ours,
        theirs,
        f"Published rows: {ds.dataset}, figures as their sources report them (not rerun here).",
    ]
