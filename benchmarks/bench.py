"""``bench``: every stage of building and scoring, the product's path next to BTF's reference recipe.

For each method:

- fast path, the product's own: the bank is built by :func:`patchbank_builder.build.build_bank` (its stage
  timings are the build table; thresholds from the validation split), and the test split is scored one
  sample at a time by :func:`patchbank.predict.predict` (its stage timings: decode, features, search,
  post);
- reference path: BTF's recipe as published (:mod:`patchbank_benchmarks.reference`), samples decoded and
  prepared by :meth:`patchbank.predict.Sample.prepare`, timed under the same stage names;
- the service, end to end as a line calls it (:mod:`patchbank_benchmarks.service_bench`'s harness);

and prints ratios, peak memory, and the difference in image scores and metrics between the two paths, so a
speed-up can never silently change results. Also: search time, recall and metric cost of each index kind,
samples/s of :func:`predict` by batch size, and the service's resident size with many categories loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from patchbank import bank as bankfmt
from patchbank.coreset import CoresetSpec
from patchbank.data import GOOD, SampleRef, list_samples, read_mask
from patchbank.features import create_extractor
from patchbank.features.base import FeatureExtractor
from patchbank.index import INDEX_KINDS, PatchIndex
from patchbank.predict import Prediction, Sample, StageTimings, predict
from patchbank.preprocess import IMAGE_SIZE, resize_mask
from patchbank.scorer import BankScorer, anomaly_maps, image_scores, load_scorer, nearest, resize_map
from patchbank.weights import WeightsRequest
from patchbank_benchmarks.reference import btf_coreset, btf_image_score, btf_search, reference_options
from patchbank_benchmarks.service_bench import Latency, service_latency, serving
from patchbank_builder.build import BuildRequest, build_bank, timed
from patchbank_builder.evaluate import figures

BUILD_STAGES = ("extractor", "features", "coreset", "held-out", "write")  # build_bank's, but "evaluate"
SCORE_STAGES = tuple(StageTimings.model_fields)  # predict's: decode, features, search, post
METRICS = ("image_auroc", "pixel_auroc", "au_pro")
METRIC_TOLERANCE = 0.005


@dataclass
class BenchConfig:
    root: Path
    category: str = "puck"
    methods: Sequence[str] = ("fpfh", "rgb+fpfh")
    n_train: int = 100
    n_validation: int = 10  # validation/good samples: the fast bank's thresholds come from them
    n_test: int = 10  # test samples per kind
    size: int = 800  # demo image side, pixels
    weights: WeightsRequest = field(default_factory=WeightsRequest)
    device: str = "cpu"
    batch_size: int = 8  # the fast build's
    batch_sizes: Sequence[int] = (1, 8)  # of the throughput table
    index_kinds: Sequence[str] = INDEX_KINDS
    coreset: CoresetSpec = field(default_factory=CoresetSpec)
    reference: bool = True
    memory_categories: int = 10
    precision: str | None = None  # backbone arithmetic of the fast path's rgb methods (None: the default)
    progress: bool = True


class PathFigures(BaseModel):
    build_s: dict[str, float] = Field(description="seconds per build stage (BUILD_STAGES)")
    build_peak_mb: float = Field(description="peak resident memory of the process while building, MiB")
    score_ms: dict[str, float] = Field(
        description="mean milliseconds per sample and score stage (SCORE_STAGES), and their total"
    )
    metrics: dict[str, float] = Field(description="I-AUROC, P-AUROC and AU-PRO at 224 x 224")
    image_scores: list[float] = Field(description="image score of each test sample, in test-split order")


class IndexFigures(BaseModel):
    kind: str
    search_ms: float = Field(description="mean search milliseconds per sample (784 queries)")
    recall_at_1: float = Field(description="share of patches whose nearest vector is the exact one")
    metrics: dict[str, float]


class MethodReport(BaseModel):
    method: str
    options: dict[str, Any] = Field(description="the fast path's extractor options (defaults filled in)")
    index_kind: str = Field(description="the fast path's index kind")
    bank_size: int
    dim: int
    fast: PathFigures
    reference: PathFigures | None
    service: Latency = Field(description="POST /score end to end through uvicorn, one client")
    max_image_score_diff: float | None = Field(description="largest |fast - reference| image score")
    indexes: list[IndexFigures]
    throughput: dict[int, float] = Field(
        description="samples/s of predict over the test split, by batch size"
    )


class BenchReport(BaseModel):
    machine: str
    device: str
    size: int
    n_train: int
    n_validation: int
    n_test: int = Field(description="test samples in all (every kind)")
    methods: list[MethodReport]
    service_rss_mb: dict[str, float] = Field(default_factory=dict)


# -- measuring ---------------------------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident set size of this process, MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Largest resident size seen while the block runs (polled every 10 ms by a thread)."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakRSS:
        self.peak = rss_mb()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def machine() -> str:
    name = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} cores {name}{gpu}, torch {torch.__version__}"


def mean_ms(per_sample_s: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean milliseconds per stage (SCORE_STAGES and total) of per-sample seconds."""
    return {k: 1000.0 * float(np.mean([t[k] for t in per_sample_s])) for k in (*SCORE_STAGES, "total")}


# -- data --------------------------------------------------------------------------------------------------


def ensure_data(cfg: BenchConfig) -> Path:
    """The demo dataset of the run's sizes (train, validation and test splits), generated once under
    ``root`` and reused by later runs."""
    from patchbank_synthetic.demo_data import generate

    data = cfg.root / f"data-{cfg.size}-{cfg.n_train}-{cfg.n_validation}-{cfg.n_test}"
    if not (data / cfg.category / "test").is_dir():
        generate(
            data,
            [cfg.category],
            n_train=cfg.n_train,
            n_validation=cfg.n_validation,
            n_test=cfg.n_test,
            size=(cfg.size, cfg.size),
            progress=cfg.progress,
        )
    return data


@dataclass(frozen=True)
class BenchSample:
    ref: SampleRef
    sample: Sample  # the files' bytes, as a line sends them
    mask: np.ndarray  # (224, 224) bool ground truth at the model's resolution


def load_test(data: Path, category: str) -> list[BenchSample]:
    """The test split in memory: bytes to score, and masks to score against."""
    out = []
    for ref in list_samples(data, category, "test"):
        with Image.open(ref.rgb) as im:
            w, h = im.size
        out.append(BenchSample(ref, Sample.from_ref(ref), resize_mask(read_mask(ref, (h, w)), IMAGE_SIZE)))
    return out


def metrics(tests: Sequence[BenchSample], scores: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    """I-AUROC, P-AUROC and AU-PRO of (N,) image scores and (N, 224, 224) maps, as ``evaluate`` computes them."""
    labels = np.array([s.ref.label for s in tests])
    masks = np.stack([s.mask for s in tests])
    return figures(labels, scores, masks, maps).model_dump(include=set(METRICS))


# -- the fast path: the product's build and predict --------------------------------------------------------


def build_fast_bank(
    method: str, options: dict[str, Any], data: Path, banks: Path, cfg: BenchConfig
) -> tuple[dict[str, float], float]:
    """``build_bank`` of the test category into ``banks`` (no evaluation: the bench scores the test split
    itself): its stage seconds, and the process's peak resident MiB while it ran."""
    req = BuildRequest(
        category=cfg.category,
        data_root=data,
        banks=banks,
        method=method,
        options={method: options} if options else {},
        coreset=cfg.coreset,
        weights=cfg.weights,
        device=cfg.device,
        batch_size=cfg.batch_size,
        evaluate=False,
        progress=cfg.progress,
    )
    with PeakRSS() as peak:
        result = build_bank(req)
    return result.timings_s, peak.peak


def predict_each(
    scorer: BankScorer, tests: Sequence[BenchSample], cfg: BenchConfig
) -> tuple[list[Prediction], dict[str, float]]:
    """``predict`` of each test sample alone (full maps, as the service), after a warm-up call: the
    predictions, and mean ms per stage (predict's own timings; total: the wall clock of the call)."""
    predict(scorer, [tests[0].sample])
    preds: list[Prediction] = []
    times: list[dict[str, float]] = []
    for s in _bar(tests, cfg, "fast scoring"):
        start = time.perf_counter()
        (p,) = predict(scorer, [s.sample])
        total = time.perf_counter() - start
        times.append({**{k: v / 1000 for k, v in p.timings.model_dump().items()}, "total": total})
        preds.append(p)
    return preds, mean_ms(times)


def index_figures(scorer: BankScorer, tests: Sequence[BenchSample], cfg: BenchConfig) -> list[IndexFigures]:
    """Each index kind over the fast bank's vectors: search time, recall@1 against exact search, metrics
    (the test features as the scorer extracts them, searched one sample at a time)."""
    (index,) = scorer.bank.indices
    feats = [scorer.features([s.sample.prepare(scorer.image_size)])[0] for s in tests]  # (1, 784, D) each
    exact = PatchIndex(index.vectors, index.ids, "flat", cfg.device)
    exact_rows = np.stack([nearest(exact, f)[0][0] for f in feats])
    out = []
    for kind in cfg.index_kinds:
        idx = PatchIndex(index.vectors, index.ids, kind, cfg.device)
        search_s = 0.0
        scores: list[float] = []
        maps: list[np.ndarray] = []  # (224, 224) each
        found: list[np.ndarray] = []  # (784,) bank rows each
        for f in feats:
            start = time.perf_counter()
            rows, dists = nearest(idx, f)
            search_s += time.perf_counter() - start
            scores.append(float(image_scores(idx, f, rows, dists)[0]))
            maps.append(anomaly_maps(dists)[1][0])
            found.append(rows[0])
        out.append(
            IndexFigures(
                kind=kind,
                search_ms=1000 * search_s / len(feats),
                recall_at_1=float((np.stack(found) == exact_rows).mean()),
                metrics=metrics(tests, np.array(scores), np.stack(maps)),
            )
        )
    return out


def throughput(scorer: BankScorer, tests: Sequence[BenchSample], batch_size: int) -> float:
    """Samples/s of ``predict`` over the whole test split in batches of ``batch_size`` (full maps)."""
    samples = [s.sample for s in tests]
    start = time.perf_counter()
    for i in range(0, len(samples), batch_size):
        predict(scorer, samples[i : i + batch_size])
    return len(samples) / (time.perf_counter() - start)


# -- the reference path: BTF's recipe ----------------------------------------------------------------------


@dataclass
class ReferenceBank:
    extractor: FeatureExtractor
    bank: torch.Tensor  # (M, D) float32 coreset rows
    timings_s: dict[str, float]
    peak_mb: float


def reference_build(
    method: str, options: dict[str, Any], train: Sequence[SampleRef], cfg: BenchConfig, out_dir: Path
) -> ReferenceBank:
    """BTF's loop: read and extract one sample, next; greedy coreset; ``torch.save`` of the bank. The
    extractor's ``fit`` (a method's data-dependent scaling) runs as in ``build_bank``, so both paths score
    the same features. No held-out stage: BTF sets no thresholds."""
    t: dict[str, float] = {}
    with PeakRSS() as peak:
        with timed(t, "extractor"):
            extractor = create_extractor(method, reference_options(method, options), cfg.weights, "cpu")
        with timed(t, "features"):
            raw = [
                extractor.extract([Sample.from_ref(r).prepare(extractor.image_size)])[0]
                for r in _bar(train, cfg, "reference features")
            ]
            feats = extractor.fit(np.stack(raw))
            flat = feats.reshape(-1, feats.shape[2])
        with timed(t, "coreset"):
            rows = btf_coreset(flat, cfg.coreset.ratio, cfg.coreset.eps, cfg.coreset.seed)
        with timed(t, "write"):
            bank = torch.from_numpy(flat[rows])
            torch.save(bank, out_dir / "reference.pt")
    return ReferenceBank(extractor, bank, t, peak.peak)


def reference_score(
    ref: ReferenceBank, tests: Sequence[BenchSample], cfg: BenchConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """BTF's per-sample scoring under predict's stage names: (N,) image scores, (N, 224, 224) maps, and mean
    ms per stage. search: ``torch.cdist`` search, Eq. 7 and the 224 map; post: the map at the input's size."""
    scores: list[float] = []
    maps: list[np.ndarray] = []
    times: list[dict[str, float]] = []
    for s in _bar(tests, cfg, "reference scoring"):
        t: dict[str, float] = {}
        start = time.perf_counter()
        with timed(t, "decode"):
            p = s.sample.prepare(ref.extractor.image_size)
        with timed(t, "features"):
            patches = torch.from_numpy(ref.extractor.extract([p])[0])
        with timed(t, "search"):
            min_val, min_idx = btf_search(ref.bank, patches)
            scores.append(btf_image_score(ref.bank, patches, min_val, min_idx))
            amap = anomaly_maps(min_val.numpy()[None].astype(np.float64))[1][0]
        with timed(t, "post"):
            resize_map(amap, p.input_size)
        t["total"] = time.perf_counter() - start
        maps.append(amap)
        times.append(t)
    return np.array(scores), np.stack(maps), mean_ms(times)


# -- one method, the whole run -----------------------------------------------------------------------------


def method_options(method: str, precision: str | None) -> dict[str, Any]:
    """The fast path's extractor options: the defaults, with ``precision`` for the rgb part if given."""
    if not precision or "rgb" not in method:
        return {}
    return {"rgb": {"precision": precision}} if "+" in method else {"precision": precision}


def banks_dir(work: Path, method: str) -> Path:
    """One banks folder per method (the bank's name is the data's category)."""
    return work / f"banks-{method.replace('+', '-')}"


def bench_method(
    method: str, data: Path, work: Path, tests: list[BenchSample], cfg: BenchConfig
) -> MethodReport:
    """Both paths of one method over the same data: build, score, service, index kinds, batching."""
    train = list_samples(data, cfg.category, "train", kinds=[GOOD])
    options = method_options(method, cfg.precision)
    warm = create_extractor(method, options, cfg.weights, cfg.device)  # JIT, allocator, caches: not timed
    warm.extract([Sample.from_ref(train[0]).prepare(warm.image_size)])
    del warm
    banks = banks_dir(work, method)
    build_s, build_peak = build_fast_bank(method, options, data, banks, cfg)
    scorer = load_scorer(banks, cfg.category, device=cfg.device)
    preds, score_ms = predict_each(scorer, tests, cfg)
    scores = np.array([p.image_score for p in preds])
    fast = PathFigures(
        build_s=build_s,
        build_peak_mb=build_peak,
        score_ms=score_ms,
        metrics=metrics(tests, scores, np.stack([p.map224 for p in preds])),
        image_scores=scores.tolist(),
    )
    with serving(banks, cfg.device) as url:
        service = service_latency(url, cfg.category, [s.sample for s in tests], n=len(tests))
    indexes = index_figures(scorer, tests, cfg)
    rates = {bs: throughput(scorer, tests, bs) for bs in cfg.batch_sizes}

    reference: PathFigures | None = None
    diff: float | None = None
    if cfg.reference:
        ref = reference_build(method, options, train, cfg, work)
        r_scores, r_maps, r_ms = reference_score(ref, tests, cfg)
        reference = PathFigures(
            build_s=ref.timings_s,
            build_peak_mb=ref.peak_mb,
            score_ms=r_ms,
            metrics=metrics(tests, r_scores, r_maps),
            image_scores=r_scores.tolist(),
        )
        diff = float(np.abs(scores - r_scores).max())
    (index,) = scorer.bank.indices
    return MethodReport(
        method=method,
        options=scorer.extractors[0].spec.options,
        index_kind=index.kind,
        bank_size=len(index),
        dim=index.dim,
        fast=fast,
        reference=reference,
        service=service,
        max_image_score_diff=diff,
        indexes=indexes,
        throughput=rates,
    )


def service_rss(banks: Path, category: str, n: int, device: str) -> dict[str, float]:
    """Resident MiB of a fresh process that loads the service's banks with ``n`` categories (copies of
    one bank under n names), before and after loading, and after one warm-up score per extractor."""
    many = banks.parent / "banks-memory"
    shutil.rmtree(many, ignore_errors=True)
    src = bankfmt.load_bank(banks, category)
    for i in range(n):
        name = f"{category}-{i:02d}"
        manifest = src.manifest.model_copy(update={"category": name, "version": "v0000"})
        bankfmt.write_version(many, manifest, bankfmt.copy_files_from(src.path))
    code = (
        "import json, sys; from pathlib import Path; from patchbank_benchmarks.bench import rss_mb; "
        "from patchbank.loaded import LoadedBanks; "
        "before = rss_mb(); r = LoadedBanks(Path(sys.argv[1]), device=sys.argv[2]); "
        "r.load_all(); loaded = rss_mb(); r.warm_up(); "
        "print(json.dumps(dict(start=before, loaded=loaded, warm=rss_mb(), categories=len(r.categories()))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(many), device], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_bench(cfg: BenchConfig, emit: Callable[[str], None] = print) -> BenchReport:
    cfg.root.mkdir(parents=True, exist_ok=True)
    data = ensure_data(cfg)
    work = cfg.root / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    tests = load_test(data, cfg.category)
    report = BenchReport(
        machine=machine(),
        device=cfg.device,
        size=cfg.size,
        n_train=cfg.n_train,
        n_validation=cfg.n_validation,
        n_test=len(tests),
        methods=[],
    )
    for method in cfg.methods:
        report.methods.append(bench_method(method, data, work, tests, cfg))
        emit(format_method(report.methods[-1]))
    if cfg.memory_categories:
        heaviest = banks_dir(work, cfg.methods[-1])
        report.service_rss_mb = service_rss(heaviest, cfg.category, cfg.memory_categories, cfg.device)
        emit(format_memory(report))
    return report


# -- tables ------------------------------------------------------------------------------------------------


def _table(rows: list[tuple[object, ...]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _ratio(fast: float | None, ref: float | None) -> str:
    return f"{fast / ref:.2f}x" if fast is not None and ref else "-"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _stage_rows(
    fast: dict[str, float], ref: dict[str, float] | None, stages: Sequence[str], fmt: str
) -> list[tuple[object, ...]]:
    """One row per stage, then the total (the sum of the stages unless the figures hold their own)."""

    def get(figures: dict[str, float] | None, stage: str) -> float | None:
        if figures is None:
            return None
        return figures.get(stage, sum(figures.values())) if stage == "total" else figures.get(stage)

    rows: list[tuple[object, ...]] = [("stage", "fast", "reference", "fast / reference")]
    for st in (*stages, "total"):
        f, r = get(fast, st), get(ref, st)
        rows.append((st, _num(f, fmt), _num(r, fmt), _ratio(f, r)))
    return rows


def format_method(r: MethodReport) -> str:
    ref = r.reference
    out = [f"## {r.method}: bank {r.bank_size} x {r.dim} ({r.index_kind})", ""]
    rows = _stage_rows(r.fast.build_s, ref.build_s if ref else None, BUILD_STAGES, ".2f")
    rows.append(
        ("peak RSS MiB", f"{r.fast.build_peak_mb:.0f}", _num(ref.build_peak_mb if ref else None, ".0f"), "")
    )
    out += ["build (seconds; fast: build_bank's stages)", "", _table(rows), ""]
    rows = _stage_rows(r.fast.score_ms, ref.score_ms if ref else None, SCORE_STAGES, ".1f")
    ref_total = ref.score_ms["total"] if ref else None
    s = r.service
    for name, v in (("p50", s.p50_ms), ("p95", s.p95_ms), ("mean", s.mean_ms)):
        rows.append((f"service {name}", f"{v:.1f}", "-", _ratio(v, ref_total)))
    out += [
        "score one sample (ms, mean over the test split; fast: predict's stages; "
        f"service: POST /score through uvicorn, map=png, {s.n} requests)",
        "",
        _table(rows),
        "",
        "results (fast path vs reference path)",
        "",
    ]
    rows = [("metric", "fast", "reference", "difference")]
    for m in METRICS:
        f, b = r.fast.metrics[m], ref.metrics[m] if ref else None
        over = b is not None and abs(f - b) > METRIC_TOLERANCE
        d = "-" if b is None else f"{f - b:+.4f}" + (f" (over {METRIC_TOLERANCE})" if over else "")
        rows.append((m, f"{f:.4f}", _num(b, ".4f"), d))
    if r.max_image_score_diff is not None and ref:
        scale = float(np.max(np.abs(ref.image_scores)))
        rows.append(("max |image score diff|", f"{r.max_image_score_diff:.4g}", f"of {scale:.4g}", ""))
    out += [_table(rows), "", "index kinds over the fast bank", ""]
    rows = [("kind", "search ms", "recall@1", *METRICS)]
    for ix in r.indexes:
        rows.append(
            (
                ix.kind,
                f"{ix.search_ms:.1f}",
                f"{ix.recall_at_1:.4f}",
                *(f"{ix.metrics[m]:.4f}" for m in METRICS),
            )
        )
    out += [_table(rows), "", "batching (samples/s of predict, whole test split)", ""]
    rows = [("batch size", "samples/s")] + [(bs, f"{v:.2f}") for bs, v in r.throughput.items()]
    out += [_table(rows), ""]
    return "\n".join(out)


def format_memory(report: BenchReport) -> str:
    m = report.service_rss_mb
    return (
        f"service resident size with {m.get('categories', 0):.0f} {report.methods[-1].method} categories: "
        f"{m['start']:.0f} MiB at start, {m['loaded']:.0f} MiB with the banks loaded, "
        f"{m['warm']:.0f} MiB after warm-up\n"
    )


def _bar(items: Sequence[Any], cfg: BenchConfig, desc: str) -> Any:
    return tqdm(items, desc=desc, unit="sample", disable=not cfg.progress, leave=False)
