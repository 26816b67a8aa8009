"""``bench`` end to end on a tiny dataset: the default (late-fusion) method and a one-bank method run, the
tables print, the one-bank method's paths agree, and every method is set against BTF's rgb+fpfh baseline."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from patchbank.cli import run_command
from patchbank.coreset import CoresetSpec, create_sampler
from patchbank.errors import WeightsError
from patchbank.methods import DEFAULT_METHOD, parse_method
from patchbank.predict import StageTimings
from patchbank.weights import WeightsRequest
from patchbank_benchmarks import bench
from patchbank_benchmarks.bench import (
    BASELINE_METHOD,
    BUILD_STAGES,
    RANDOM_NOTE,
    SCORE_STAGES,
    BenchConfig,
    BenchReport,
    MethodReport,
)
from patchbank_benchmarks.cli import BENCH, default_methods
from patchbank_benchmarks.reference import btf_coreset, reference_options

ONE_BANK = "fpfh"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchReport, str]:
    """The default method (late fusion, default weights: the packaged backbone's) and fpfh, no --weights."""
    root = tmp_path_factory.mktemp("bench")
    argv = ["--root", str(root), "--size", "160", "--train", "3", "--validation", "2", "--test", "1"]
    argv += ["--methods", f"{DEFAULT_METHOD},{ONE_BANK}", "--device", "cpu", "--batch-sizes", "1,3"]
    argv += [
        "--index-kinds",
        "flat",
        "--memory-categories",
        "2",
        "--json",
        str(root / "report.json"),
        "--quiet",
    ]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.delenv("PATCHBANK_WEIGHTS", raising=False)  # no weights given: each method's default
        assert run_command(BENCH, argv) == 0
    return BenchReport.model_validate(json.loads((root / "report.json").read_text())), printed.getvalue()


def method(r: BenchReport, name: str) -> MethodReport:
    return next(m for m in r.methods if m.method == name)


@pytest.mark.slow
def test_every_stage_is_timed_on_both_paths(report: tuple[BenchReport, str]) -> None:
    r, text = report
    m = method(r, ONE_BANK)
    assert SCORE_STAGES == ("decode", "features", "search", "post")  # predict's StageTimings
    assert m.reference is not None
    assert set(BUILD_STAGES) == set(m.fast.build_s)  # build_bank's stages, no evaluation
    assert set(BUILD_STAGES) - {"held-out"} == set(m.reference.build_s)  # BTF sets no thresholds
    for path in (m.fast, m.reference):
        assert all(v >= 0 for v in path.build_s.values()) and path.build_peak_mb > 100
        assert set(path.score_ms) == {*SCORE_STAGES, "total"} and path.score_ms["features"] > 0
        assert path.score_ms["total"] >= 0.99 * sum(path.score_ms[s] for s in SCORE_STAGES)
    s = m.service
    assert s.path == "service" and s.n == r.n_test == 6 and 0 < s.p50_ms <= s.p95_ms and s.mean_ms > 0
    assert set(m.throughput) == {1, 3} and all(v > 0 for v in m.throughput.values())
    for heading in ("build (seconds", "score one sample", "service p50", "service p95", "fast / reference"):
        assert heading in text
    for stage in (*BUILD_STAGES, *SCORE_STAGES, "recall@1", "au_pro", "batch size"):
        assert f"| {stage} " in text, stage
    assert r.service_rss_mb["categories"] == 2 and r.service_rss_mb["loaded"] > 0
    assert "worker" in r.threads


@pytest.mark.slow
def test_fast_and_reference_paths_agree(report: tuple[BenchReport, str]) -> None:
    m = method(report[0], ONE_BANK)
    assert m.reference is not None
    ref = np.array(m.reference.image_scores)
    assert len(ref) == len(m.fast.image_scores) == 6
    assert m.max_image_score_diff is not None and m.max_image_score_diff <= 0.01 * np.abs(ref).max()
    for name, value in m.fast.metrics.items():
        assert abs(value - m.reference.metrics[name]) <= 0.005, name
    (flat,) = m.indexes
    assert flat.kind == "flat" and flat.recall_at_1 == 1.0 and flat.metrics == pytest.approx(m.fast.metrics)


@pytest.mark.slow
def test_the_default_late_fusion_method_benches_with_packaged_weights(
    report: tuple[BenchReport, str],
) -> None:
    r, text = report
    m = r.methods[0]
    members = parse_method(DEFAULT_METHOD).members
    assert m.method == DEFAULT_METHOD and len(members) > 1
    assert [x.extractor for x in m.members] == list(members)
    assert m.weights == "default" and m.weights_note is None
    assert {x.extractor: x.weights for x in m.members}["rgb"] == "package"  # real weights, no network
    assert m.bank_size == m.fast.bank_size == sum(x.size for x in m.members) > 0
    assert m.dim == "+".join(str(x.dim) for x in m.members)
    assert m.reference is None and m.max_image_score_diff is None and m.indexes == []  # one-bank only
    assert set(m.fast.build_s) == set(BUILD_STAGES) and m.fast.score_ms["features"] > 0
    assert m.service.n == 6 and m.service.p50_ms > 0 and set(m.throughput) == {1, 3}
    section = text.split(f"## {DEFAULT_METHOD}:", 1)[1].split("\n## ", 1)[0]
    assert "index kinds: - (one-bank methods only)" in section and "| service p50 " in section
    assert "random init" not in section


@pytest.mark.slow
def test_every_method_is_set_against_the_btf_baseline(report: tuple[BenchReport, str]) -> None:
    r, text = report
    base = r.baseline
    assert base is not None and base.method == BASELINE_METHOD and not base.reused  # not among the methods
    assert (
        base.options["rgb"]["backbone"] == "wide_resnet50_2"
    )  # BTF's recipe, whatever the product's default
    assert set(base.figures.build_s) == set(BUILD_STAGES) - {"held-out"} and base.figures.bank_size > 0
    per_sample = base.figures.score_ms["total"]
    assert per_sample > 0 and len(base.figures.image_scores) == 6
    # offline, the hub weights cannot load: random:0 stands in, and says so
    assert (base.weights == "random") == (base.weights_note == RANDOM_NOTE)
    header = "## against BTF's reference recipe (rgb+fpfh, wide_resnet50_2, one sample at a time)"
    summary = text.split(header, 1)[1]
    assert summary.startswith(f" [{RANDOM_NOTE}]" if base.weights_note else "\n")
    assert text.index(header) > text.index(f"## {ONE_BANK}:")  # after every method's tables
    columns = summary.split("| method ", 1)[1].split("\n", 1)[0]
    assert columns.split("|")[1].strip() == "service p50 / BTF"  # the path a line uses comes first
    for m in r.methods:
        x = m.against_baseline
        assert x is not None
        assert x.service_p50 == pytest.approx(m.service.p50_ms / per_sample)
        assert x.service_mean == pytest.approx(m.service.mean_ms / per_sample)
        assert x.predict == pytest.approx(m.fast.score_ms["total"] / per_sample)
        assert x.build == pytest.approx(sum(m.fast.build_s.values()) / sum(base.figures.build_s.values()))
        row = next(line for line in summary.splitlines() if line.startswith(f"| {m.method} "))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[1:5] == [
            f"{x.service_p50:.3f}x",
            f"{m.service.p50_ms:.1f}",
            f"{m.service.mean_ms:.1f}",
            f"{x.service_mean:.3f}x",
        ]
        assert cells[6] == f"{x.build:.3f}x" and cells[8] == f"{x.predict:.3f}x"
        assert cells[9] == str(m.bank_size)
    assert f"| BTF reference: {BASELINE_METHOD}" in summary


@pytest.mark.slow
def test_without_a_baseline_the_summary_has_no_ratios(report: tuple[BenchReport, str]) -> None:
    r = report[0]
    bare = r.model_copy(
        update={
            "baseline": None,
            "methods": [m.model_copy(update={"against_baseline": None}) for m in r.methods],
        }
    )
    text = bench.format_summary(bare)
    assert text.startswith("## every method (no baseline: --no-reference)") and "BTF reference" not in text
    row = next(line for line in text.splitlines() if line.startswith(f"| {DEFAULT_METHOD} "))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert (
        cells[1] == cells[4] == cells[6] == cells[8] == "-"
        and cells[2] == f"{r.methods[0].service.p50_ms:.1f}"
    )


@pytest.mark.slow
def test_memory_figure_loads_the_first_methods_bank(report: tuple[BenchReport, str]) -> None:
    r, text = report
    assert r.service_rss_method == r.methods[0].method == DEFAULT_METHOD
    last = text.rstrip().splitlines()[-1]
    assert last.startswith(f"service resident size with 2 categories of {DEFAULT_METHOD} (the first method's")


def test_default_methods_put_the_products_method_first() -> None:
    assert default_methods() == tuple(dict.fromkeys((DEFAULT_METHOD, "fpfh", "rgb+fpfh")))
    assert tuple(BenchConfig(Path("x")).methods) == default_methods()


def test_default_weights_that_cannot_load_fall_back_to_random(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    made: list[tuple[str, WeightsRequest]] = []

    def create(name: str, options: Any, weights: WeightsRequest, device: str) -> object:
        if name == "rgb+fpfh" and weights.source != "random":
            raise WeightsError("hub weights offline")
        made.append((name, weights))
        return SimpleNamespace(name=name)

    monkeypatch.setattr(bench, "create_extractor", create)
    cfg = BenchConfig(Path("x"))
    weights, note, extractors = bench.member_extractors(parse_method("fpfh/rgb+fpfh"), {}, cfg)
    assert weights == WeightsRequest.random(0) and note == RANDOM_NOTE
    assert [e.name for e in extractors] == ["fpfh", "rgb+fpfh"]
    assert made[-2:] == [("fpfh", weights), ("rgb+fpfh", weights)]  # every member on the stand-in
    assert "rgb+fpfh" in caplog.text and RANDOM_NOTE in caplog.text

    caplog.clear()
    weights, note, _ = bench.member_extractors(parse_method("fpfh"), {}, cfg)
    assert weights == WeightsRequest() and note is None and not caplog.records

    given = BenchConfig(Path("x"), weights=WeightsRequest.parse("pretrained"))
    with pytest.raises(WeightsError):  # asked for by name: failing is an error, not a fallback
        bench.member_extractors(parse_method("rgb+fpfh"), {}, given)


def test_in_process_scoring_runs_in_a_worker_thread_as_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []

    def fake_predict(scorer: object, samples: list[object]) -> list[object]:
        threads.append(threading.current_thread().name)
        return [SimpleNamespace(timings=StageTimings(decode=1, features=2, search=3, post=4))]

    monkeypatch.setattr(bench, "predict", fake_predict)
    tests = [SimpleNamespace(sample=object()) for _ in range(3)]
    preds, ms = bench.predict_each(object(), tests, BenchConfig(Path("x"), progress=False))  # type: ignore[arg-type]
    assert len(preds) == 3 and len(threads) == 4  # a warm-up call, then one per sample
    assert all(t != threading.main_thread().name and "AnyIO worker" in t for t in threads), threads
    assert ms["features"] == pytest.approx(2.0) and ms["total"] > 0
    assert bench.in_worker(lambda: threading.current_thread() is threading.main_thread()) is False


def test_member_options_carry_precision_to_each_backbone() -> None:
    assert bench.member_options(parse_method("rgb/fpfh"), "bf16") == {"rgb": {"precision": "bf16"}}
    assert bench.member_options(parse_method("rgb+fpfh"), "bf16") == {
        "rgb+fpfh": {"rgb": {"precision": "bf16"}}
    }
    assert bench.member_options(parse_method("fpfh"), "bf16") == {}
    assert bench.member_options(parse_method("rgb/fpfh"), None) == {}
    names = {bench.banks_dir(Path("w"), m).name for m in ("rgb+fpfh", "rgb/fpfh", "rgb/fpfh@svm", "fpfh")}
    assert len(names) == 4 and not any("/" in n for n in names)


def test_btf_coreset_selects_what_the_greedy_sampler_selects() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(3000, 600)).astype(np.float32)
    spec = CoresetSpec(ratio=0.05, seed=4)
    fast = create_sampler(spec, progress=False).run(feats)
    np.testing.assert_array_equal(fast, btf_coreset(feats, spec.ratio, spec.eps, spec.seed))


def test_reference_options_use_open3d_kdtree() -> None:
    assert reference_options("fpfh", {})["neighbours"] == "kdtree"
    assert reference_options("rgb+fpfh", {}) == {"fpfh": {"neighbours": "kdtree"}}
    assert reference_options("rgb", {"precision": "bf16"}) == {}  # BTF's backbone runs in fp32
    opts = {"rgb": {"backbone": "resnet18", "precision": "bf16"}, "fpfh": {"window": 5}}
    ref = reference_options("rgb+fpfh", opts)
    assert ref == {"rgb": {"backbone": "resnet18"}, "fpfh": {"window": 5, "neighbours": "kdtree"}}
    assert opts["fpfh"] == {"window": 5} and opts["rgb"]["precision"] == "bf16"  # the caller's are untouched


def test_bad_arguments_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(BENCH, ["--root", str(tmp_path), "--batch-sizes", "0"]) == 2
    assert "--batch-sizes takes positive integers" in capsys.readouterr().err
    assert run_command(BENCH, ["--root", str(tmp_path), "--index-kinds", "ivf"]) == 2
    assert "unknown index kind 'ivf'" in capsys.readouterr().err
    assert run_command(BENCH, ["--root", str(tmp_path), "--methods", "rgb/fpfh,nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before any data is made
