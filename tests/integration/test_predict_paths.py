"""One pipeline: the service, ``evaluate``, the benchmark and the library's ``predict()`` give the same sample
the very same score, and every answer of a batch carries its own timings."""

from __future__ import annotations

from pathlib import Path

import httpx

from patchbank.data import list_samples
from patchbank.predict import Sample, predict
from patchbank.scorer import load_scorer
from patchbank_benchmarks.bench import BenchConfig, load_test, predict_each
from patchbank_builder.build import BuildResult
from patchbank_builder.evaluate import evaluate
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.scoring import score_samples
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY


def test_service_evaluate_bench_and_predict_agree_exactly(
    fpfh_build: tuple[Path, BuildResult], demo_root: Path, tmp_path: Path
) -> None:
    banks, _ = fpfh_build
    refs = list_samples(demo_root, CATEGORY, "test")
    scorer = load_scorer(banks, CATEGORY)
    evaluated = {s.name: s.image_score for s in evaluate(scorer, refs, progress=False).scores}
    predicted = {p.sample_id: p.image_score for p in predict(scorer, [Sample.from_ref(r) for r in refs])}
    tests = load_test(demo_root, CATEGORY)
    benched = {
        t.ref.name: p.image_score
        for t, p in zip(
            tests, predict_each(scorer, tests, BenchConfig(tmp_path, progress=False))[0], strict=True
        )
    }
    served = {}
    with live_server(create_app(ServiceSettings(banks=banks, device="cpu", log_json=False))) as url:
        for ref in refs:
            r = httpx.post(
                f"{url}/score",
                data={"category": CATEGORY, "sample_id": ref.name, "map": "none"},
                files={"rgb": ("rgb.png", ref.rgb.read_bytes()), "xyz": ("xyz.tiff", ref.xyz.read_bytes())},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            served[ref.name] = r.json()["image_score"]
    assert len(served) == len(refs) >= 6
    assert served == evaluated == predicted == benched  # exactly: one code path, batched or not


def test_each_answer_of_a_batch_has_its_own_timings(
    fpfh_build: tuple[Path, BuildResult], demo_root: Path
) -> None:
    """A batched pass once shared one Timings object between its answers, so setting one request's total
    (and storing it for an idempotent retry) changed the others'."""
    scorer = load_scorer(fpfh_build[0], CATEGORY)
    refs = list_samples(demo_root, CATEGORY, "test")[:2]
    first, second = score_samples(scorer, [Sample.from_ref(r) for r in refs], "none")
    assert first.timings_ms == second.timings_ms  # one pass: the same stage times...
    first.timings_ms.total = 123456.0
    assert second.timings_ms.total != 123456.0  # ...but each answer its own record
