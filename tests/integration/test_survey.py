"""``patchbank evaluate --all`` and ``compare --all`` through the real command on the demo root (puck,
bracket): the tables and their files against the banks' manifests read independently, the resumed run, and
the published reference figures against their own published means."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest

from patchbank.bank import versions
from patchbank.cli import main
from patchbank_builder.build import BuildResult
from patchbank_builder.calibrate import calibrate_version
from patchbank_builder.published import published
from patchbank_builder.survey import Cell, assemble
from patchbank_builder.survey_tables import render_text
from patchbank_synthetic.real3d import generate as generate_real3d
from tests.conftest import CATEGORY, OTHER

KEYS = ("image_auroc", "pixel_auroc", "au_pro")
TITLES = ("I-AUROC", "P-AUROC", "AU-PRO")


def run(*argv: str | Path) -> tuple[int, str, str]:
    """``patchbank ARGV`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def active_evaluation(banks: Path, category: str) -> dict[str, float]:
    """The active bank's recorded evaluation, read straight from its manifest.json."""
    version = (banks / category / "ACTIVE").read_text().strip()
    return json.loads((banks / category / version / "manifest.json").read_text())["evaluation"]


def cell_file(banks: Path, category: str, method: str = "fpfh") -> Path:
    return banks / "survey" / "cells" / method / f"{category}.json"


@pytest.fixture(scope="module")
def first_run(
    demo_root: Path, fpfh_build: tuple[Path, BuildResult], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int, str, str]:
    """evaluate --all over a copy of the session's banks (an fpfh bank of puck only): bracket is built."""
    banks = tmp_path_factory.mktemp("survey") / "banks"
    shutil.copytree(fpfh_build[0], banks)
    code, out, err = run(
        "evaluate", "--all", "--data-root", demo_root, "--banks", banks, "--method", "fpfh", "--quiet"
    )
    return banks, code, out, err


@pytest.fixture
def surveyed(first_run: tuple[Path, int, str, str], tmp_path: Path) -> Path:
    """This test's own copy of the banks and survey the first run left."""
    banks = tmp_path / "banks"
    shutil.copytree(first_run[0], banks)
    return banks


def test_evaluate_all_prints_and_writes_the_manifests_figures(first_run: tuple[Path, int, str, str]) -> None:
    banks, code, out, err = first_run
    assert code == 0, err
    categories = sorted([CATEGORY, OTHER])
    expected = {c: active_evaluation(banks, c) for c in categories}  # bracket's bank was built by the run
    assert versions(banks, OTHER) == ["v0001"]

    # printed: three tables, our row, a column per category and the mean last, 3 decimals
    lines = out.splitlines()
    for title, key in zip(TITLES, KEYS, strict=True):
        at = lines.index(title)
        assert lines[at + 1].split() == ["method", *categories, "Mean"]
        row = lines[at + 3].split()
        values = [expected[c][key] for c in categories]
        assert row == ["fpfh", *(f"{v:.3f}" for v in values), f"{statistics.fmean(values):.3f}"]
    assert "No published reference rows apply" in out

    survey = banks / "survey"
    with (survey / "survey.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["metric"], r["method"], r["source"]) for r in rows] == [(k, "fpfh", "measured") for k in KEYS]
    doc = json.loads((survey / "survey.json").read_text())
    assert doc["categories"] == categories
    md = (survey / "survey.md").read_text()
    for key, row, table in zip(KEYS, rows, doc["tables"], strict=True):
        values = [expected[c][key] for c in categories]
        assert [float(row[c]) for c in categories] == values
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values))
        assert table["metric"] == key and table["rows"][0]["values"] == dict(
            zip(categories, values, strict=True)
        )
        assert "| fpfh | measured | " + " | ".join(f"{v:.3f}" for v in values) in md

    # where each cell came from: puck's bank was evaluated on this root's test split, bracket had none
    puck, bracket = (json.loads(cell_file(banks, c).read_text()) for c in (CATEGORY, OTHER))
    assert (puck["source"], puck["bank"], puck["active"]) == (
        "manifest",
        f"{CATEGORY}/v0001",
        f"{CATEGORY}/v0001",
    )
    assert (bracket["source"], bracket["bank"]) == ("built", f"{OTHER}/v0001")
    assert f"{OTHER} fpfh:" in err and f"{CATEGORY} fpfh:" in err and "resuming" not in err


def test_a_rerun_computes_only_the_missing_cell(surveyed: Path, demo_root: Path) -> None:
    """Stopped after one cell (the other's file gone): the rerun recomputes that one only, reusing the
    finished one untouched; a new active version is a changed input, and --fresh recomputes all."""
    banks = surveyed
    kept, missing = cell_file(banks, OTHER), cell_file(banks, CATEGORY)
    missing.unlink()
    before = kept.stat().st_mtime_ns, kept.read_text()
    code, _, err = run("evaluate", "--all", "--data-root", demo_root, "--banks", banks, "--quiet")
    assert code == 0, err
    assert "resuming: 1 of 2 cells done" in err
    assert f"{CATEGORY} fpfh:" in err and f"{OTHER} fpfh:" not in err
    assert (kept.stat().st_mtime_ns, kept.read_text()) == before
    assert Cell.model_validate_json(missing.read_text()).source == "manifest"
    assert versions(banks, OTHER) == ["v0001"] and versions(banks, CATEGORY) == ["v0001"]  # nothing rebuilt

    # another active version of puck (recalibrated: same index, its evaluation carried over)
    calibrate_version(banks, CATEGORY, progress=False)
    code, _, err = run("evaluate", "--all", "--data-root", demo_root, "--banks", banks, "--quiet")
    assert code == 0 and "resuming: 1 of 2 cells done" in err
    assert Cell.model_validate_json(missing.read_text()).bank == f"{CATEGORY}/v0002"
    assert (kept.stat().st_mtime_ns, kept.read_text()) == before

    code, _, err = run("evaluate", "--all", "--data-root", demo_root, "--banks", banks, "--quiet", "--fresh")
    assert code == 0 and "resuming" not in err
    assert kept.stat().st_mtime_ns != before[0]
    assert versions(banks, OTHER) == ["v0001"]


def test_a_bank_evaluated_on_another_split_is_evaluated_again(
    surveyed: Path, demo_root: Path, tmp_path: Path
) -> None:
    """puck's manifest evaluation scored its test split; on a root with one defect kind fewer it cannot stand."""
    root = tmp_path / "root"
    shutil.copytree(demo_root, root)
    kind = sorted(p for p in (root / CATEGORY / "test").iterdir() if p.name != "good")[0]
    shutil.rmtree(kind)
    code, out, err = run("evaluate", "--all", "--data-root", root, "--banks", surveyed, "--quiet")
    assert code == 0, err
    assert "resuming: 1 of 2 cells done" in err  # bracket's data is unchanged
    cell = Cell.model_validate_json(cell_file(surveyed, CATEGORY).read_text())
    recorded = active_evaluation(surveyed, CATEGORY)
    removed = len(list((demo_root / CATEGORY / "test" / kind.name / "rgb").iterdir()))
    assert (cell.source, cell.bank) == ("evaluated", f"{CATEGORY}/v0001")
    assert cell.n_test == recorded["n_test"] - removed
    assert versions(surveyed, CATEGORY) == ["v0001"]
    assert f"{cell.image_auroc:.3f}" in out.splitlines()[3]


def test_compare_all_builds_each_method_once(demo_root: Path, tmp_path: Path) -> None:
    root, banks = tmp_path / "root", tmp_path / "banks"
    shutil.copytree(demo_root / OTHER, root / OTHER)
    argv = ("compare", "--all", "--data-root", root, "--banks", banks, "--methods", "fpfh", "--quiet")
    code, out, err = run(*argv)
    assert code == 0, err
    cell = Cell.model_validate_json(cell_file(banks, OTHER).read_text())
    assert (cell.source, cell.bank, cell.active) == ("built", f"{OTHER}/v0001", None)
    assert not (banks / OTHER / "ACTIVE").exists()  # compare's banks are inactive versions
    assert json.loads((banks / OTHER / "v0001" / "manifest.json").read_text())["calibration"] is not None
    assert out.splitlines()[3].split()[0] == "fpfh"
    code, _, err = run(*argv)
    assert code == 0 and "resuming: 1 of 1 cells done" in err
    assert versions(banks, OTHER) == ["v0001"]


def test_a_point_cloud_root_is_surveyed_with_point_fpfh(tmp_path: Path) -> None:
    """A Real3D-AD-style root: its default method, its metric names, and the built bank's figures."""
    root, banks = tmp_path / "root", tmp_path / "banks"
    (category,) = (
        p.name
        for p in generate_real3d(root, ["capsule"], n_prototypes=2, n_test=2, points=2000, progress=False)
    )
    code, out, err = run("evaluate", "--all", "--data-root", root, "--banks", banks, "--quiet")
    assert code == 0, err
    lines = out.splitlines()
    recorded = active_evaluation(banks, category)
    for title, key in zip(("object AUROC", "point AUROC", "point AU-PRO"), KEYS, strict=True):
        row = lines[lines.index(title) + 3].split()
        assert row == ["point-fpfh", f"{recorded[key]:.3f}", f"{recorded[key]:.3f}"]
    cell = Cell.model_validate_json(cell_file(banks, category, "point-fpfh").read_text())
    assert (cell.source, cell.bank) == ("built", f"{category}/v0001")


def test_wrong_flags_are_one_line_errors(demo_root: Path, tmp_path: Path) -> None:
    for argv, says in [
        (("evaluate", "--all", "--category", CATEGORY), "--category: --all surveys every category"),
        (("evaluate", "--all", "--version", "v0001"), "--version: not with --all"),
        (("evaluate", "--fresh"), "--category is required"),
        (("evaluate", "--category", CATEGORY, "--fresh"), "--fresh: apply with --all"),
    ]:
        code, _, err = run(*argv, "--data-root", demo_root, "--banks", tmp_path)
        assert code == 2 and err.count("\n") == 1 and says in err, err


def test_published_rows_match_their_published_means() -> None:
    """An independent check of the figures typed in: one figure per category, and each fully known row's
    mean within published rounding of the mean its source prints."""
    checked = 0
    for ds in published():
        assert len(ds.categories) == len(set(ds.categories)) > 0
        for row in ds.rows:
            src = ds.sources[row.source]
            assert src.paper and src.table and src.repository, row.method
            for metric, figs in row.metrics.items():
                assert list(figs.values) == ds.categories, (ds.dataset, row.method, metric)
                known = [v for v in figs.values.values() if v is not None]
                assert all(0 < v <= 1 for v in known)
                if len(known) == len(ds.categories) and figs.mean is not None:
                    assert abs(statistics.fmean(known) - figs.mean) <= 0.0015, (
                        ds.dataset,
                        row.method,
                        metric,
                    )
                    checked += 1
                else:
                    assert src.note, f"{row.method}: figures left null must say why"
    assert checked >= 15  # 3 BTF rows x 3 metrics on MVTec 3D-AD, 4 rows x 2 metrics on Real3D-AD


def test_reference_rows_on_some_of_a_datasets_categories(tmp_path: Path) -> None:
    """A root with two MVTec 3D-AD categories shows BTF's figures for those columns; their Mean is over the
    shown categories, the published mean over all ten in the note."""
    ours = {"bagel": 0.5, "foam": 0.75}
    cells = [
        Cell(
            method="fpfh",
            category=c,
            image_auroc=v,
            pixel_auroc=v,
            au_pro=v,
            n_test=4,
            bank=f"{c}/v0001",
            source="manifest",
            data_root=str(tmp_path),
            data_digest="0" * 64,
            at="2024-01-01T00:00:00+00:00",
        )
        for c, v in ours.items()
    ]
    survey = assemble(tmp_path, tmp_path, cells)
    table = survey.tables[0]
    assert table.title == "I-AUROC" and table.rows[0].mean == pytest.approx(0.625)
    btf = {r.method: r for r in table.rows}["BTF RGB + FPFH"]
    assert btf.values == {"bagel": 0.923, "foam": 0.657}  # the README's preprocessed Image ROCAUC row
    assert btf.mean == pytest.approx((0.923 + 0.657) / 2)
    assert btf.note == "published mean over all 10 categories: 0.878"
    text = render_text(survey)
    assert "BTF RGB + FPFH [1]" in text and "over the shown categories" in text
