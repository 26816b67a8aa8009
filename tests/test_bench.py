"""``bench`` end to end on a tiny dataset: both paths run, the tables print, and the paths agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bank_builder.bench import BUILD_STAGES, SCORE_STAGES, BenchConfig, BenchReport, run_bench
from bank_builder.cli import bench_main
from bank_builder.reference import btf_coreset, reference_options
from patchbank.coreset import CoresetSpec, create_sampler


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchReport, str]:
    printed: list[str] = []
    cfg = BenchConfig(
        root=tmp_path_factory.mktemp("bench"),
        methods=["fpfh"],
        n_train=3,
        n_test=1,
        size=160,
        batch_sizes=[1, 3],
        memory_categories=2,
        progress=False,
    )
    return run_bench(cfg, emit=printed.append), "\n".join(printed)


@pytest.mark.slow
def test_every_stage_is_timed_on_both_paths(report: tuple[BenchReport, str]) -> None:
    r, text = report
    (m,) = r.methods
    assert m.reference is not None
    for path in (m.fast, m.reference):
        assert set(BUILD_STAGES) <= set(path.build_s) and all(v >= 0 for v in path.build_s.values())
        assert set(SCORE_STAGES) == set(path.score_ms) and path.score_ms["features"] > 0
        assert path.build_peak_mb > 100
    assert m.service_ms > 0 and set(m.throughput) == {1, 3}
    for heading in (
        "build (seconds)",
        "score one sample",
        "service, end to end",
        "fast / reference",
        "recall@1",
    ):
        assert heading in text
    assert r.service_rss_mb["categories"] == 2 and r.service_rss_mb["loaded"] > 0


@pytest.mark.slow
def test_fast_and_reference_paths_agree(report: tuple[BenchReport, str]) -> None:
    (m,) = report[0].methods
    assert m.reference is not None
    ref = np.array(m.reference.image_scores)
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
    assert bench_main(["--root", str(tmp_path), "--batch-sizes", "0"]) == 2
    assert "--batch-sizes takes positive integers" in capsys.readouterr().err
    assert bench_main(["--root", str(tmp_path), "--index-kinds", "ivf"]) == 2
    assert "unknown index kind 'ivf'" in capsys.readouterr().err
    assert bench_main(["--root", str(tmp_path), "--methods", "fpfh,rgb/fpfh"]) == 2
    assert "bench times one-bank methods" in capsys.readouterr().err
