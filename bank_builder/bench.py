"""``bench``: every stage of building and scoring, the fast path next to the reference path, in one run.

For each method it builds a bank both ways from the same training samples (stages: read, features,
coreset, index write), scores the test split both ways one sample at a time (decode, preprocess, features,
search, reweight, map), scores it once more end to end through the HTTP service (the ASGI app), and prints
ratios, peak memory, and the difference in image scores and metrics between the two paths, so a speed-up
can never silently change results. Also: search recall and metric cost of each index kind, samples/s
with batching, and the service's resident size with many categories loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from bank_builder.build import new_manifest, new_member
from bank_builder.calibrate import score_stats
from bank_builder.reference import btf_coreset, btf_image_score, btf_search, reference_options
from patchbank import bank as bankfmt
from patchbank.coreset import CoresetSpec, create_sampler
from patchbank.data import GOOD, SampleRef, list_samples, read_mask
from patchbank.decode import check_pair, decode_rgb, decode_xyz
from patchbank.extract import load_prepared
from patchbank.features import create_extractor
from patchbank.features.base import FeatureExtractor
from patchbank.index import INDEX_KINDS, PatchIndex, default_kind
from patchbank.metrics import au_pro, image_auroc, pixel_auroc
from patchbank.preprocess import Prepared, prepare, resize_mask
from patchbank.scorer import anomaly_maps, image_scores, nearest, resize_map
from patchbank.weights import WeightsRequest

BUILD_STAGES = ("read", "features", "coreset", "index write")
SCORE_STAGES = ("decode", "preprocess", "features", "search", "reweight", "map")
METRICS = ("image_auroc", "pixel_auroc", "au_pro")
METRIC_TOLERANCE = 0.005


@dataclass
class BenchConfig:
    root: Path
    category: str = "puck"
    methods: Sequence[str] = ("fpfh", "rgb+fpfh")
    n_train: int = 100
    n_test: int = 10
    size: int = 800
    weights: WeightsRequest = field(default_factory=WeightsRequest)
    device: str = "cpu"
    batch_size: int = 8
    batch_sizes: Sequence[int] = (1, 8)
    index_kinds: Sequence[str] = INDEX_KINDS
    coreset: CoresetSpec = field(default_factory=CoresetSpec)
    reference: bool = True
    memory_categories: int = 10
    precision: str | None = None  # backbone arithmetic of the fast path's rgb methods (None: the default)
    progress: bool = True


class PathFigures(BaseModel):
    build_s: dict[str, float] = Field(description="seconds per build stage")
    build_peak_mb: float = Field(description="peak resident memory of the process while building, MiB")
    score_ms: dict[str, float] = Field(description="mean milliseconds per sample and score stage")
    metrics: dict[str, float]
    image_scores: list[float]


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
    service_ms: float = Field(description="mean end-to-end milliseconds per sample through the HTTP app")
    max_image_score_diff: float | None = Field(description="largest |fast - reference| image score")
    indexes: list[IndexFigures]
    throughput: dict[int, float] = Field(description="samples/s scoring the test split, by batch size")


class BenchReport(BaseModel):
    machine: str
    device: str
    size: int
    n_train: int
    n_test: int
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


@contextmanager
def timed(out: dict[str, float], stage: str, scale: float = 1.0) -> Iterator[None]:
    """Add the block's wall-clock time (seconds x ``scale``) to ``out[stage]``."""
    start = time.perf_counter()
    yield
    out[stage] = out.get(stage, 0.0) + (time.perf_counter() - start) * scale


def machine() -> str:
    name = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} cores {name}{gpu}, torch {torch.__version__}"


# -- data --------------------------------------------------------------------------------------------------


def ensure_data(cfg: BenchConfig) -> Path:
    """The demo dataset of the run's sizes, generated once under ``root`` and reused by later runs."""
    from bank_builder.demo_data import generate

    data = cfg.root / f"data-{cfg.size}-{cfg.n_train}-{cfg.n_test}"
    if not (data / cfg.category / "test").is_dir():
        generate(
            data,
            [cfg.category],
            n_train=cfg.n_train,
            n_validation=0,
            n_test=cfg.n_test,
            size=(cfg.size, cfg.size),
            progress=cfg.progress,
        )
    return data


@dataclass(frozen=True)
class TestSample:
    ref: SampleRef
    rgb: bytes
    xyz: bytes
    mask: np.ndarray  # (224, 224) uint8 0/1 at the prepared size


def load_test(data: Path, category: str, size: int) -> list[TestSample]:
    out = []
    for ref in list_samples(data, category, "test"):
        xyz = ref.xyz.read_bytes()
        shape = decode_xyz(xyz, ref.xyz.name).shape[:2]
        out.append(TestSample(ref, ref.rgb.read_bytes(), xyz, resize_mask(read_mask(ref, shape), size)))
    return out


# -- the two paths -----------------------------------------------------------------------------------------


@dataclass
class FastBank:
    index: PatchIndex
    feats: np.ndarray  # (N, 784, D) training features
    projected_dim: int | None
    timings_s: dict[str, float]
    peak_mb: float


def fast_build(
    extractor: FeatureExtractor, train: Sequence[SampleRef], cfg: BenchConfig, out_dir: Path
) -> FastBank:
    """Read in threads, features in batches, the coreset sampler, index write: the build's own parts."""
    t: dict[str, float] = {}
    size = extractor.image_size
    with PeakRSS() as peak:
        with timed(t, "read"), ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            prepared = list(pool.map(lambda r: load_prepared(r, size), train))
        with timed(t, "features"):
            feats = np.concatenate(
                [
                    extractor.extract(prepared[i : i + cfg.batch_size])
                    for i in _bar(range(0, len(prepared), cfg.batch_size), cfg, "fast features")
                ]
            )
        flat = feats.reshape(-1, feats.shape[2])
        with timed(t, "coreset"):
            sampler = create_sampler(cfg.coreset, device=cfg.device, progress=cfg.progress)
            rows = sampler.run(flat)
        with timed(t, "index write"):
            index = PatchIndex(flat[rows], rows, default_kind(flat.shape[1]), cfg.device)
            index.save(out_dir / "fast.faiss")
    return FastBank(index, feats, sampler.projected_dim, t, peak.peak)


def reference_build(
    extractor: FeatureExtractor, train: Sequence[SampleRef], cfg: BenchConfig, out_dir: Path
) -> tuple[torch.Tensor, dict[str, float], float]:
    """BTF's loop: read one sample, extract its features, next; greedy coreset; torch.save of the bank."""
    t: dict[str, float] = {}
    size = extractor.image_size
    feats = []
    with PeakRSS() as peak:
        for ref in _bar(train, cfg, "reference features"):
            with timed(t, "read"):
                p = load_prepared(ref, size)
            with timed(t, "features"):
                feats.append(extractor.extract([p])[0])
        flat = np.stack(feats).reshape(-1, feats[0].shape[1])
        with timed(t, "coreset"):
            rows = btf_coreset(flat, cfg.coreset.ratio, cfg.coreset.eps, cfg.coreset.seed)
        with timed(t, "index write"):
            bank = torch.from_numpy(flat[rows])
            torch.save(bank, out_dir / "reference.pt")
    return bank, t, peak.peak


def _decode(s: TestSample, size: int) -> tuple[Prepared, dict[str, float]]:
    t: dict[str, float] = {}
    with timed(t, "decode", 1000):
        image, xyz = decode_rgb(s.rgb), decode_xyz(s.xyz, s.ref.xyz.name)
        check_pair(image, xyz)
    with timed(t, "preprocess", 1000):
        p = prepare(image, xyz, size)
    return p, t


def fast_score(
    extractor: FeatureExtractor, index: PatchIndex, tests: Sequence[TestSample], cfg: BenchConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, float], np.ndarray]:
    """Score each test sample alone, stage by stage: (N,) image scores, (N, 224, 224) maps, mean ms, and
    the (N, 784, D) features (for the index comparison)."""
    total: dict[str, float] = {}
    scores, maps, all_feats = [], [], []
    for s in _bar(tests, cfg, "fast scoring"):
        p, t = _decode(s, extractor.image_size)
        with timed(t, "features", 1000):
            feats = extractor.extract([p])
        all_feats.append(feats)
        with timed(t, "search", 1000):
            rows, dists = nearest(index, feats)
        with timed(t, "reweight", 1000):
            scores.append(float(image_scores(index, feats, rows, dists)[0]))
        with timed(t, "map", 1000):
            amap = anomaly_maps(dists)[1][0]
            resize_map(amap, p.input_size)
        maps.append(amap)
        _add(total, t)
    return np.array(scores), np.stack(maps), _mean(total, len(tests)), np.concatenate(all_feats)


def reference_score(
    extractor: FeatureExtractor, bank: torch.Tensor, tests: Sequence[TestSample], cfg: BenchConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """BTF's per-sample scoring with ``torch.cdist``; the same decode, preprocess and map code."""
    total: dict[str, float] = {}
    scores, maps = [], []
    for s in _bar(tests, cfg, "reference scoring"):
        p, t = _decode(s, extractor.image_size)
        with timed(t, "features", 1000):
            patches = torch.from_numpy(extractor.extract([p])[0])
        with timed(t, "search", 1000):
            min_val, min_idx = btf_search(bank, patches)
        with timed(t, "reweight", 1000):
            scores.append(btf_image_score(bank, patches, min_val, min_idx))
        with timed(t, "map", 1000):
            amap = anomaly_maps(min_val.numpy()[None].astype(np.float64))[1][0]
            resize_map(amap, p.input_size)
        maps.append(amap)
        _add(total, t)
    return np.array(scores), np.stack(maps), _mean(total, len(tests))


def metrics(tests: Sequence[TestSample], scores: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    labels = np.array([s.ref.kind != GOOD for s in tests], dtype=int)
    masks = np.stack([s.mask for s in tests])
    return {
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel_auroc(masks, maps),
        "au_pro": au_pro(masks, maps),
    }


def index_figures(
    index: PatchIndex, feats: np.ndarray, tests: Sequence[TestSample], cfg: BenchConfig
) -> list[IndexFigures]:
    """Each index kind over the fast bank's vectors: search time, recall@1 against exact search, metrics."""
    exact = PatchIndex(index.vectors, index.ids, "flat", cfg.device)
    exact_rows = np.stack([nearest(exact, f[None])[0][0] for f in feats])  # per sample, as timed below
    out = []
    for kind in cfg.index_kinds:
        idx = PatchIndex(index.vectors, index.ids, kind, cfg.device)
        t: dict[str, float] = {}
        scores, maps, found = [], [], []
        for f in feats:
            with timed(t, "search", 1000):
                rows, dists = nearest(idx, f[None])
            scores.append(float(image_scores(idx, f[None], rows, dists)[0]))
            maps.append(anomaly_maps(dists)[1][0])
            found.append(rows[0])
        recall = float((np.stack(found) == exact_rows).mean())
        out.append(
            IndexFigures(
                kind=kind,
                search_ms=t["search"] / len(feats),
                recall_at_1=recall,
                metrics=metrics(tests, np.array(scores), np.stack(maps)),
            )
        )
    return out


def throughput(
    extractor: FeatureExtractor, index: PatchIndex, tests: Sequence[TestSample], batch_size: int
) -> float:
    """Samples/s scoring the whole test split in batches (decode in threads, one backbone pass per batch)."""
    size = extractor.image_size
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for i in range(0, len(tests), batch_size):
            prepared = list(pool.map(lambda s: _decode(s, size)[0], tests[i : i + batch_size]))
            feats = extractor.extract(prepared)
            rows, dists = nearest(index, feats)
            image_scores(index, feats, rows, dists)
            anomaly_maps(dists)
    return len(tests) / (time.perf_counter() - start)


def service_latency(
    banks: Path, category: str, tests: Sequence[TestSample], device: str, weights: str | None
) -> float:
    """Mean ms per sample, POST /score through the ASGI app (multipart upload, PNG map), after a warm-up."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(banks=banks, device=device, weights=weights, log_json=False, queue_size=64)
    lat = []
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 300
        while client.get("/readyz").status_code != 200:  # banks load in the background
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not become ready: {client.get('/readyz').text}")
            time.sleep(0.2)
        for i, s in enumerate([tests[0], *tests]):
            start = time.perf_counter()
            r = client.post(
                "/score",
                data={"category": category, "map": "png"},
                files={"rgb": ("rgb.png", s.rgb), "xyz": (s.ref.xyz.name, s.xyz)},
            )
            r.raise_for_status()
            if i:
                lat.append((time.perf_counter() - start) * 1000)
    return statistics.mean(lat)


def write_bench_bank(
    banks: Path,
    category: str,
    extractor: FeatureExtractor,
    built: FastBank,
    train: Sequence[SampleRef],
    good: tuple[np.ndarray, np.ndarray],
    coreset: CoresetSpec,
) -> bankfmt.Manifest:
    """The fast bank as the service loads it; thresholds from the test split's good samples (bench only)."""
    scores, maps = good
    stats = score_stats("bench: test/good", scores.tolist(), maps.reshape(len(maps), -1).max(1).tolist())
    index = built.index
    coreset_info = bankfmt.CoresetInfo(
        spec=coreset,
        n_patches=built.feats.shape[0] * built.feats.shape[1],
        size=len(index),
        projected_dim=built.projected_dim,
    )
    member = new_member(extractor, index, bankfmt.INDEX_FILE, coreset_info)
    manifest = new_manifest(category, extractor.spec.method, [member], None, train, stats)
    return bankfmt.write_version(banks, manifest, lambda d: index.save(d / bankfmt.INDEX_FILE))


# -- one method, the whole run -----------------------------------------------------------------------------


def method_options(method: str, precision: str | None) -> dict[str, Any]:
    """The fast path's extractor options: the defaults, with ``precision`` for the rgb part if given."""
    if not precision or "rgb" not in method:
        return {}
    return {"rgb": {"precision": precision}} if "+" in method else {"precision": precision}


def bank_name(cfg: BenchConfig, method: str) -> str:
    return f"{cfg.category}-{method.replace('+', '-')}"


def bench_method(
    method: str, data: Path, work: Path, tests: list[TestSample], cfg: BenchConfig
) -> MethodReport:
    train = list_samples(data, cfg.category, "train", kinds=[GOOD])
    options = method_options(method, cfg.precision)
    extractor = create_extractor(method, options, cfg.weights, cfg.device)
    extractor.extract([load_prepared(train[0], extractor.image_size)])  # warm-up: JIT, allocator, caches
    built = fast_build(extractor, train, cfg, work)
    scores, maps, score_ms, feats = fast_score(extractor, built.index, tests, cfg)
    fast = PathFigures(
        build_s=built.timings_s,
        build_peak_mb=built.peak_mb,
        score_ms=score_ms,
        metrics=metrics(tests, scores, maps),
        image_scores=scores.tolist(),
    )
    good = np.array([s.ref.kind == GOOD for s in tests])
    banks = work / "banks"
    category = bank_name(cfg, method)
    write_bench_bank(banks, category, extractor, built, train, (scores[good], maps[good]), cfg.coreset)
    weights_file = str(cfg.weights.path) if cfg.weights.path else None
    service_ms = service_latency(banks, category, tests, cfg.device, weights_file)

    indexes = index_figures(built.index, feats, tests, cfg)
    rates = {bs: throughput(extractor, built.index, tests, bs) for bs in cfg.batch_sizes}

    reference = None
    diff = None
    if cfg.reference:
        ref_extractor = create_extractor(method, reference_options(method, options), cfg.weights, "cpu")
        bank, build_s, peak = reference_build(ref_extractor, train, cfg, work)
        r_scores, r_maps, r_ms = reference_score(ref_extractor, bank, tests, cfg)
        reference = PathFigures(
            build_s=build_s,
            build_peak_mb=peak,
            score_ms=r_ms,
            metrics=metrics(tests, r_scores, r_maps),
            image_scores=r_scores.tolist(),
        )
        diff = float(np.abs(scores - r_scores).max())
    return MethodReport(
        method=method,
        options=extractor.spec.options,
        index_kind=built.index.kind,
        bank_size=len(built.index),
        dim=built.index.dim,
        fast=fast,
        reference=reference,
        service_ms=service_ms,
        max_image_score_diff=diff,
        indexes=indexes,
        throughput=rates,
    )


def service_rss(banks: Path, category: str, n: int, device: str) -> dict[str, float]:
    """Resident MiB of a fresh process that loads the service's registry with ``n`` categories (copies of
    one bank under n names), before and after loading, and after one warm-up score per extractor."""
    many = banks.parent / "banks-memory"
    shutil.rmtree(many, ignore_errors=True)
    src = bankfmt.load_bank(banks, category)
    for i in range(n):
        name = f"{category}-{i:02d}"
        manifest = src.manifest.model_copy(update={"category": name, "version": "v0000"})
        bankfmt.write_version(many, manifest, bankfmt.copy_files_from(src.path))
    code = (
        "import json, sys; from bank_builder.bench import rss_mb; from patchbank.registry import BankRegistry; "
        "before = rss_mb(); r = BankRegistry(__import__('pathlib').Path(sys.argv[1]), device=sys.argv[2]); "
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
    tests = load_test(data, cfg.category, 224)
    report = BenchReport(
        machine=machine(),
        device=cfg.device,
        size=cfg.size,
        n_train=cfg.n_train,
        n_test=len(tests),
        methods=[],
    )
    for method in cfg.methods:
        report.methods.append(bench_method(method, data, work, tests, cfg))
        emit(format_method(report.methods[-1]))
    if cfg.memory_categories:
        heaviest = bank_name(cfg, cfg.methods[-1])
        report.service_rss_mb = service_rss(work / "banks", heaviest, cfg.memory_categories, cfg.device)
        emit(format_memory(report))
    return report


# -- tables ------------------------------------------------------------------------------------------------


def _table(rows: list[tuple[object, ...]]) -> str:
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _ratio(fast: float, ref: float | None) -> str:
    return f"{fast / ref:.2f}x" if ref else "-"


def format_method(r: MethodReport) -> str:
    ref = r.reference
    out = [f"## {r.method}: bank {r.bank_size} x {r.dim} ({r.index_kind})", "", "build (seconds)", ""]
    rows: list[tuple[object, ...]] = [("stage", "fast", "reference", "fast / reference")]
    for st in (*BUILD_STAGES, "total"):
        f = sum(r.fast.build_s.values()) if st == "total" else r.fast.build_s.get(st, 0.0)
        b = (sum(ref.build_s.values()) if st == "total" else ref.build_s.get(st, 0.0)) if ref else None
        rows.append((st, f"{f:.2f}", f"{b:.2f}" if b is not None else "-", _ratio(f, b)))
    rows.append(
        ("peak RSS MiB", f"{r.fast.build_peak_mb:.0f}", f"{ref.build_peak_mb:.0f}" if ref else "-", "")
    )
    out += [_table(rows), "", "score one sample (ms, mean over the test split)", ""]
    rows = [("stage", "fast", "reference", "fast / reference")]
    for st in (*SCORE_STAGES, "total"):
        f = sum(r.fast.score_ms.values()) if st == "total" else r.fast.score_ms[st]
        b = (sum(ref.score_ms.values()) if st == "total" else ref.score_ms[st]) if ref else None
        rows.append((st, f"{f:.1f}", f"{b:.1f}" if b is not None else "-", _ratio(f, b)))
    ref_total = sum(ref.score_ms.values()) if ref else None
    rows.append(("service, end to end", f"{r.service_ms:.1f}", "-", _ratio(r.service_ms, ref_total)))
    out += [_table(rows), "", "results (fast path vs reference path)", ""]
    rows = [("metric", "fast", "reference", "difference")]
    for m in METRICS:
        f = r.fast.metrics[m]
        b = ref.metrics[m] if ref else None
        d = (
            f"{f - b:+.4f}{'' if abs(f - b) <= METRIC_TOLERANCE else ' (over 0.005)'}"
            if b is not None
            else "-"
        )
        rows.append((m, f"{f:.4f}", f"{b:.4f}" if b is not None else "-", d))
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
    out += [_table(rows), "", "batching (samples/s, whole test split)", ""]
    rows = [("batch size", "samples/s")] + [(bs, f"{v:.2f}") for bs, v in r.throughput.items()]
    out += [_table(rows), ""]
    return "\n".join(out)


def format_memory(report: BenchReport) -> str:
    m = report.service_rss_mb
    return (
        f"service resident size with {m.get('categories', 0):.0f} {report.methods[-1].method} categories: {m['start']:.0f} MiB at start, "
        f"{m['loaded']:.0f} MiB with the banks loaded, {m['warm']:.0f} MiB after warm-up\n"
    )


def _add(total: dict[str, float], t: dict[str, float]) -> None:
    for k, v in t.items():
        total[k] = total.get(k, 0.0) + v


def _mean(total: dict[str, float], n: int) -> dict[str, float]:
    return {k: total.get(k, 0.0) / n for k in SCORE_STAGES}


def _bar(items: Sequence[Any], cfg: BenchConfig, desc: str) -> Any:
    return tqdm(items, desc=desc, unit="sample", disable=not cfg.progress, leave=False)
