"""Published figures kept beside the survey: each dataset's reference rows as the papers report them, with
their sources cited (``patchbank_builder/published/*.json``, package data).

A row holds, per metric, every category's figure (``null`` where no source could be read) and the mean the
source publishes over all of the dataset's categories. :func:`reference_rows` picks the rows that apply to a
data root (its categories a subset of the dataset's) and says how their Mean column is made.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from patchbank.errors import DataError

Metric = Literal["image_auroc", "pixel_auroc", "au_pro"]
METRICS: tuple[Metric, ...] = ("image_auroc", "pixel_auroc", "au_pro")
FILES = ("mvtec3d_ad.json", "real3d_ad.json")


class Source(BaseModel):
    """Where a row's figures were read."""

    model_config = ConfigDict(extra="forbid")

    short: str = Field(description="how the tables name the source")
    paper: str = Field(description="authors, title, venue, arXiv id")
    table: str = Field(description="which table or passage the figures are from")
    repository: str | None = Field(None, description="the repository (and commit) the figures were read in")
    note: str | None = Field(None, description="what could not be read, and what was left null")

    def cite(self) -> str:
        return "; ".join(p for p in (self.paper, self.table, self.repository, self.note) if p)


class PublishedFigures(BaseModel):
    """One metric of one published row."""

    model_config = ConfigDict(extra="forbid")

    values: dict[str, float | None] = Field(description="per category, null where no source could be read")
    mean: float | None = Field(description="the mean the source publishes, over all the dataset's categories")


class PublishedRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="the method as the source names it")
    source: str = Field(description="key of the dataset's sources")
    metrics: dict[Metric, PublishedFigures] = Field(description="the metrics the source reports")


class PublishedDataset(BaseModel):
    """A published benchmark: its categories (the dataset's folder names) and its reference rows."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    categories: list[str] = Field(min_length=1)
    sources: dict[str, Source]
    rows: list[PublishedRow]

    @model_validator(mode="after")
    def _complete(self) -> PublishedDataset:
        for row in self.rows:
            if row.source not in self.sources:
                raise ValueError(f"{row.method}: source {row.source!r} is not among the dataset's sources")
            for metric, figs in row.metrics.items():
                if list(figs.values) != self.categories:
                    raise ValueError(f"{row.method} {metric}: one value per category, in the dataset's order")
        return self


class ReferenceRow(BaseModel):
    """A published row as a survey table shows it: the shown categories' figures and its Mean column."""

    method: str
    dataset: str
    source: Source
    values: dict[str, float | None]
    mean: float | None = Field(
        description="see note: the published mean, or the mean over the shown categories"
    )
    note: str | None = None


@cache
def published() -> tuple[PublishedDataset, ...]:
    """Every published dataset shipped with the package (validated; DataError naming a broken file)."""
    folder = resources.files("patchbank_builder") / "published"
    out = []
    for name in FILES:
        try:
            out.append(PublishedDataset.model_validate_json(folder.joinpath(name).read_text()))
        except (OSError, ValidationError) as exc:
            raise DataError(f"published reference figures {name} unreadable: {exc}") from exc
    return tuple(out)


def matching(categories: list[str]) -> PublishedDataset | None:
    """The published dataset whose categories include all of ``categories``, None when none does."""
    for ds in published():
        if categories and set(categories) <= set(ds.categories):
            return ds
    return None


def reference_rows(categories: list[str], metric: Metric) -> list[ReferenceRow]:
    """The published rows of ``metric`` for these categories (empty unless they are a subset of a published
    dataset's). Mean column: the published mean when every category of the dataset is shown; otherwise the
    mean of the shown categories' published figures (None when one is missing), the published mean over all
    categories given in the note."""
    ds = matching(categories)
    if ds is None:
        return []
    whole = set(categories) == set(ds.categories)
    rows = []
    for row in ds.rows:
        figs = row.metrics.get(metric)
        if figs is None:
            continue
        values = {c: figs.values[c] for c in categories}
        known = [v for v in values.values() if v is not None]
        note = None
        if whole:
            mean = figs.mean
        else:
            mean = sum(known) / len(known) if known and len(known) == len(values) else None
            if figs.mean is not None:
                note = f"published mean over all {len(ds.categories)} categories: {figs.mean:.3f}"
        rows.append(
            ReferenceRow(
                method=row.method,
                dataset=ds.dataset,
                source=ds.sources[row.source],
                values=values,
                mean=mean,
                note=note,
            )
        )
    return rows
