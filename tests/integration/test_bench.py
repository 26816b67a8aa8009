"""``bench`` end to end on a tiny dataset: both paths run, the tables print, and the paths agree."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from patchbank.cli import run_command
from patchbank.coreset import CoresetSpec, create_sampler
from patchbank_benchmarks.bench import BUILD_STAGES, SCORE_STAGES, BenchReport
from patchbank_benchmarks.cli import BENCH
from patchbank_benchmarks.reference import btf_coreset, reference_options


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchReport, str]:
    root = tmp_path_factory.mktemp("bench")
    argv = ["--root", str(root), "--size", "160", "--train", "3", "--validation", "2", "--test", "1"]
    argv += ["--methods", "fpfh", "--weights", "random", "--device", "cpu", "--batch-sizes", "1,3"]
    argv += ["--memory-categories", "2", "--json", str(root / "report.json"), "--quiet"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_command(BENCH, argv) == 0
    return BenchReport.model_validate(json.loads((root / "report.json").read_text())), printed.getvalue()


@pytest.mark.slow
def test_every_stage_is_timed_on_both_paths(report: tuple[BenchReport, str]) -> None:
    r, text = report
    (m,) = r.methods
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


@pytest.mark.slow
def test_fast_and_reference_paths_agree(report: tuple[BenchReport, str]) -> None:
    (m,) = report[0].methods
    assert m.reference is not None
    ref = np.array(m.reference.image_scores)
    assert len(ref) == len(m.fast.image_scores) == 6
    assert m.max_image_score_diff is not None and m.max_image_score_diff <= 0.01 * np.abs(ref).max()
    for name, value in m.fast.metrics.items():
        assert abs(value - m.reference.metrics[name]) <= 0.005, name
    flat = next(ix for ix in m.indexes if ix.kind == "flat")
    assert flat.recall_at_1 == 1.0 and flat.metrics == pytest.approx(m.fast.metrics)


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
    assert run_command(BENCH, ["--root", str(tmp_path), "--methods", "fpfh,rgb/fpfh"]) == 2
    assert "bench times one-bank methods" in capsys.readouterr().err
