"""``bench``: every stage of building and scoring, the product's path next to BTF's reference recipe.

For each method (any method name: one bank such as ``fpfh`` or ``rgb+fpfh``, or late fusion such as
``rgb/fpfh``, the product's default, or ``rgb/fpfh@svm``):

- fast path, the product's own: the bank is built by :func:`patchbank_builder.build.build_bank` (its stage
  timings are the build table; thresholds from the validation split), and the test split is scored one
  sample at a time by :func:`patchbank.predict.predict` (its stage timings: decode, features, search,
  post);
- the service, end to end as a line calls it (:mod:`patchbank_benchmarks.service_bench`'s harness: uvicorn,
  multipart upload, a PNG map in the answer);
- one-bank methods only (a single registered extractor): the same method's reference path, BTF's recipe as
  published (:mod:`patchbank_benchmarks.reference`), samples decoded and prepared by
  :meth:`patchbank.predict.Sample.prepare`, timed under the same stage names, with the difference in image
  scores and metrics between the two paths, so a speed-up can never silently change results; and the
  search time, recall and metric cost of each index kind (late fusion: "-");
- samples/s of :func:`predict` by batch size.

Then the baseline: BTF's reference recipe of ``rgb+fpfh`` (wide_resnet50_2 layers 2 and 3, Open3D KD-tree
FPFH, one sample at a time, ``torch.cdist`` search), measured once per run on the same samples (when
``rgb+fpfh`` is among the methods, its own reference path is the baseline), and a summary table of every
method against it, the service's ratio first: it is the path a line uses. Last, the resident size of a
service process with many categories of the first method's bank (the product's default method unless
``methods`` says otherwise).

Weights: ``BenchConfig.weights`` with a source is every method's. Without one, each method gets its
extractors' default weights (the default ``rgb`` backbone's ship in an installed package, so the default
method runs with real weights anywhere); a method whose default weights cannot load here (``rgb+fpfh``'s
wide_resnet50_2 hub weights, offline) falls back to ``random:0`` with a warning, and its tables and JSON say
so: random init, timings only, detection figures meaningless.

Threads: the service scores in an anyio worker thread (``State.in_thread``: ``anyio.to_thread.run_sync``
with a ``CapacityLimiter``). Every timed stage here (builds, in-process scoring, index kinds, batching, the
reference recipe) runs through that same mechanism (:func:`in_worker`, :func:`predict_each`), so the
in-process, service and baseline figures are comparable. It matters on a CPU shared with other processes:
there, torch's OpenMP team of the main thread spin-waits for descheduled workers, and the same forward pass
in the main thread was measured 50x slower (2.1 s against 40 ms for the lite0 backbone on 2 busy cores),
while worker threads were unaffected. Importing ``patchbank`` now sets ``OMP_WAIT_POLICY=PASSIVE`` unless
the environment sets it, which removes that difference.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from patchbank import bank as bankfmt
from patchbank.coreset import CoresetSpec, create_sampler
from patchbank.data import GOOD, SampleRef, list_samples, read_mask
from patchbank.errors import WeightsError
from patchbank.features import EXTRACTORS, create_extractor
from patchbank.features.base import FeatureExtractor, extract_side_by_side
from patchbank.index import INDEX_KINDS, PatchIndex
from patchbank.methods import Method, parse_method
from patchbank.predict import Prediction, Sample, StageTimings, predict
from patchbank.preprocess import IMAGE_SIZE, resize_mask
from patchbank.rules import PUBLISHED, Scoring
from patchbank.scorer import (
    BankScorer,
    anomaly_maps,
    image_scores,
    load_scorer,
    nearest,
    part_finder,
    resize_map,
)
from patchbank.weights import WeightsRequest
from patchbank_benchmarks.cli import default_methods
from patchbank_benchmarks.reference import btf_coreset, btf_image_score, btf_search, reference_options
from patchbank_benchmarks.service_bench import Latency, service_latency, serving
from patchbank_builder.build import BuildRequest, build_bank, timed
from patchbank_builder.evaluate import figures

log = logging.getLogger(__name__)
T = TypeVar("T")

BUILD_STAGES = ("extractor", "features", "coreset", "held-out", "write")  # build_bank's, but "evaluate"
SCORE_STAGES = tuple(StageTimings.model_fields)  # predict's: decode, features, search, post
METRICS = ("image_auroc", "pixel_auroc", "au_pro")
METRIC_TOLERANCE = 0.005
BASELINE_METHOD = "rgb+fpfh"  # BTF's published recipe; its reference path is every method's baseline
DEFAULT_METHODS = default_methods()  # the product's default method first, then fpfh, rgb+fpfh
RANDOM_NOTE = "random init: timings only, detection figures meaningless"


@dataclass
class BenchConfig:
    root: Path
    category: str = "puck"
    methods: Sequence[str] = DEFAULT_METHODS  # the first one's bank is the memory figure's
    n_train: int = 100
    n_validation: int = 10  # validation/good samples: the fast bank's thresholds come from them
    n_test: int = 10  # test samples per kind
    size: int = 800  # demo image side, pixels
    weights: WeightsRequest = field(default_factory=WeightsRequest)  # no source: each method's default
    device: str = "cpu"
    batch_size: int = 8  # the fast build's
    batch_sizes: Sequence[int] = (1, 8)  # of the throughput table
    index_kinds: Sequence[str] = INDEX_KINDS
    coreset: CoresetSpec = field(default_factory=CoresetSpec)
    reference: bool = True  # the same-method reference paths and the baseline
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
    bank_size: int = Field(0, description="vectors in the bank (all members')")

    @property
    def build_total_s(self) -> float:
        return float(sum(self.build_s.values()))


class IndexFigures(BaseModel):
    kind: str
    search_ms: float = Field(description="mean search milliseconds per sample (784 queries)")
    recall_at_1: float = Field(description="share of patches whose nearest vector is the exact one")
    metrics: dict[str, float]


class MemberInfo(BaseModel):
    """One member bank of the fast path (a one-bank method has one)."""

    extractor: str
    options: dict[str, Any] = Field(description="the extractor's options (defaults filled in)")
    weights: str = Field(description="the kind of its weights: package, pretrained, file, random, none")
    index_kind: str
    size: int = Field(description="vectors in the member's bank")
    dim: int


class AgainstBaseline(BaseModel):
    """A method's fast path over the baseline's (BTF's rgb+fpfh reference recipe) figures."""

    service_p50: float = Field(description="service p50 ms / the baseline's mean ms per sample")
    service_mean: float = Field(description="service mean ms / the baseline's mean ms per sample")
    predict: float = Field(description="in-process predict mean ms / the baseline's mean ms per sample")
    build: float = Field(description="build_bank seconds in all / the baseline's build seconds in all")


class MethodReport(BaseModel):
    method: str
    members: list[MemberInfo] = Field(description="the fast path's member banks, in the method's order")
    bank_size: int = Field(description="vectors in all members' banks")
    dim: str = Field(description="the members' dimensions, joined by +, e.g. 152+33")
    weights: str = Field(description="the weights asked for: default (each extractor's) or NAME[:VALUE]")
    weights_note: str | None = Field(
        None, description=f"set when the default weights could not load and random:0 stood in ({RANDOM_NOTE})"
    )
    fast: PathFigures
    reference: PathFigures | None = Field(description="the same method's BTF recipe (one-bank methods)")
    service: Latency = Field(description="POST /score end to end through uvicorn, one client")
    max_image_score_diff: float | None = Field(description="largest |fast - reference| image score")
    indexes: list[IndexFigures] = Field(description="each index kind over the bank (one-bank methods)")
    throughput: dict[int, float] = Field(
        description="samples/s of predict over the test split, by batch size"
    )
    against_baseline: AgainstBaseline | None = None


class BaselineReport(BaseModel):
    """BTF's reference recipe of rgb+fpfh, measured once per run on the same samples."""

    method: str = BASELINE_METHOD
    options: dict[str, Any] = Field(description="its extractor's options (defaults filled in)")
    weights: str = Field(description="the kind of its backbone's weights")
    weights_note: str | None = None
    reused: bool = Field(description="whether it is the reference path of this run's rgb+fpfh method")
    figures: PathFigures


class BenchReport(BaseModel):
    machine: str
    device: str
    size: int
    n_train: int
    n_validation: int
    n_test: int = Field(description="test samples in all (every kind)")
    threads: str = Field(description="where timed work runs, and torch's intra-op threads there")
    methods: list[MethodReport]
    baseline: BaselineReport | None = None
    service_rss_method: str | None = Field(None, description="the method whose bank the RSS figure loads")
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


def in_worker(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in an anyio worker thread, as the service runs its scoring (``State.in_thread``:
    ``anyio.to_thread.run_sync`` under a ``CapacityLimiter``); see the module's "Threads"."""

    async def run() -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args), limiter=anyio.CapacityLimiter(1))

    return anyio.run(run)


def thread_info() -> str:
    """Torch's intra-op threads in the main thread and in a worker thread (they are the same unless
    something set them apart)."""
    main, worker = torch.get_num_threads(), in_worker(torch.get_num_threads)
    return f"timed work in an anyio worker thread; torch intra-op threads: main {main}, worker {worker}"


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
    method: str,
    options: dict[str, dict[str, Any]],
    weights: WeightsRequest,
    data: Path,
    banks: Path,
    cfg: BenchConfig,
) -> tuple[dict[str, float], float]:
    """``build_bank`` of the test category into ``banks`` (no evaluation: the bench scores the test split
    itself; ``options`` per member), in a worker thread: its stage seconds, and the process's peak
    resident MiB while it ran."""
    req = BuildRequest(
        category=cfg.category,
        data_root=data,
        banks=banks,
        method=method,
        options=options,
        coreset=cfg.coreset,
        weights=weights,
        device=cfg.device,
        batch_size=cfg.batch_size,
        evaluate=False,
        progress=cfg.progress,
    )
    with PeakRSS() as peak:
        result = in_worker(build_bank, req)
    return result.timings_s, peak.peak


def predict_each(
    scorer: BankScorer, tests: Sequence[BenchSample], cfg: BenchConfig
) -> tuple[list[Prediction], dict[str, float]]:
    """``predict`` of each test sample alone (full maps, as the service), after a warm-up call, each call
    in an anyio worker thread under a CapacityLimiter as the service runs it: the predictions, and mean ms
    per stage (predict's own timings; total: the wall clock of the call, the hop to the thread included)."""
    preds: list[Prediction] = []
    times: list[dict[str, float]] = []

    async def run() -> None:
        limiter = anyio.CapacityLimiter(1)
        await anyio.to_thread.run_sync(predict, scorer, [tests[0].sample], limiter=limiter)
        for s in _bar(tests, cfg, "fast scoring"):
            start = time.perf_counter()
            (p,) = await anyio.to_thread.run_sync(predict, scorer, [s.sample], limiter=limiter)
            total = time.perf_counter() - start
            times.append({**{k: v / 1000 for k, v in p.timings.model_dump().items()}, "total": total})
            preds.append(p)

    anyio.run(run)
    return preds, mean_ms(times)


def index_figures(scorer: BankScorer, tests: Sequence[BenchSample], cfg: BenchConfig) -> list[IndexFigures]:
    """Each index kind over a one-bank method's vectors: search time, recall@1 against exact search,
    metrics (the test features as the scorer extracts them, searched one sample at a time); call it in a
    worker thread (:func:`in_worker`)."""
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
    """Samples/s of ``predict`` over the whole test split in batches of ``batch_size`` (full maps); call it
    in a worker thread (:func:`in_worker`)."""
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
    method: str,
    options: dict[str, Any],
    weights: WeightsRequest,
    train: Sequence[SampleRef],
    cfg: BenchConfig,
    out_dir: Path,
) -> ReferenceBank:
    """BTF's loop: read and extract one sample, next; greedy coreset; ``torch.save`` of the bank. The
    extractor's ``fit`` (a method's data-dependent scaling) runs as in ``build_bank``, so both paths score
    the same features. No held-out stage: BTF sets no thresholds. Call it in a worker thread."""
    t: dict[str, float] = {}
    with PeakRSS() as peak:
        with timed(t, "extractor"):
            extractor = create_extractor(method, reference_options(method, options), weights, "cpu")
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
    ms per stage. search: ``torch.cdist`` search, Eq. 7 and the 224 map; post: the map at the input's size.
    Call it in a worker thread."""
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


def member_options(method: Method, precision: str | None) -> dict[str, dict[str, Any]]:
    """The fast path's extractor options per member: the defaults, with ``precision`` for the backbone of
    each member that has one (its own ``precision`` option, or its ``rgb`` part's)."""
    out: dict[str, dict[str, Any]] = {}
    if not precision:
        return out
    for m in method.members:
        fields = EXTRACTORS.get(m).options_model.model_fields
        if "precision" in fields:
            out[m] = {"precision": precision}
        elif "rgb" in fields and "precision" in getattr(fields["rgb"].annotation, "model_fields", {}):
            out[m] = {"rgb": {"precision": precision}}
    return out


def member_extractors(
    method: Method, options: dict[str, dict[str, Any]], cfg: BenchConfig
) -> tuple[WeightsRequest, str | None, list[FeatureExtractor]]:
    """The weights a method runs with, a note when they stand in for others, and its member extractors made
    with them. ``cfg.weights`` with a source is every method's (failing to load is an error); without one,
    each extractor's default, or ``random:0`` with :data:`RANDOM_NOTE` (and a warning) when the defaults
    cannot load here (a WeightsError, e.g. hub weights offline)."""

    def make(weights: WeightsRequest) -> list[FeatureExtractor]:
        return [create_extractor(m, options.get(m), weights, cfg.device) for m in method.members]

    try:
        return cfg.weights, None, make(cfg.weights)
    except WeightsError as exc:
        if cfg.weights.source is not None:
            raise
        log.warning(
            "%s: its default weights cannot load here, random:0 stands in (%s): %s",
            method.name,
            RANDOM_NOTE,
            exc,
        )
        fallback = WeightsRequest.random(0)
        return fallback, RANDOM_NOTE, make(fallback)


def warm_up(
    extractors: Sequence[FeatureExtractor],
    refs: Sequence[SampleRef],
    scoring: Scoring = PUBLISHED,
    coreset: CoresetSpec | None = None,
) -> None:
    """One batch of training samples extracted as ``build_bank`` extracts them (with the part's patches when
    ``scoring`` scores the part only), then one sample alone as a line sends it, and a small coreset: JIT
    caches, the libraries' kernels for both shapes and their thread pools, the allocator; not timed, so that
    every path, BTF's reference included, is timed warm. Call it in a worker thread."""
    prepared = [Sample.from_ref(r).prepare(extractors[0].image_size) for r in refs]
    for batch in (prepared, prepared[:1]):
        extract_side_by_side(extractors, batch, part_finder(scoring))
    create_sampler(coreset or CoresetSpec(), progress=False).run(
        np.random.default_rng(0).random((256, 8), dtype=np.float32)
    )


def banks_dir(work: Path, method: str) -> Path:
    """One banks folder per method (the bank's name is the data's category): rgb+fpfh -> banks-rgb-fpfh,
    rgb/fpfh -> banks-rgb_fpfh, rgb/fpfh@svm -> banks-rgb_fpfh@svm."""
    return work / f"banks-{method.replace('+', '-').replace('/', '_')}"


def reference_path(
    method: str,
    options: dict[str, Any],
    weights: WeightsRequest,
    train: Sequence[SampleRef],
    tests: Sequence[BenchSample],
    cfg: BenchConfig,
    work: Path,
) -> tuple[PathFigures, ReferenceBank]:
    """BTF's recipe of a one-bank method, built and scored in worker threads: its figures, and its bank."""
    ref = in_worker(reference_build, method, options, weights, train, cfg, work)
    scores, maps, score_ms = in_worker(reference_score, ref, tests, cfg)
    figures = PathFigures(
        build_s=ref.timings_s,
        build_peak_mb=ref.peak_mb,
        score_ms=score_ms,
        metrics=metrics(tests, scores, maps),
        image_scores=scores.tolist(),
        bank_size=len(ref.bank),
    )
    return figures, ref


def bench_method(
    method: Method, data: Path, work: Path, tests: list[BenchSample], cfg: BenchConfig
) -> tuple[MethodReport, BaselineReport | None]:
    """One method over the data: build, score, service, batching; for a one-bank method also the index
    kinds and the same method's reference path. The second value: that reference path as the run's
    baseline, when the method is :data:`BASELINE_METHOD`."""
    train = list_samples(data, cfg.category, "train", kinds=[GOOD])
    options = member_options(method, cfg.precision)
    weights, note, warm = member_extractors(method, options, cfg)
    in_worker(warm_up, warm, train[: cfg.batch_size], method.scoring(), cfg.coreset)
    del warm
    banks = banks_dir(work, method.name)
    build_s, build_peak = build_fast_bank(method.name, options, weights, data, banks, cfg)
    scorer = load_scorer(banks, cfg.category, device=cfg.device)
    preds, score_ms = predict_each(scorer, tests, cfg)
    scores = np.array([p.image_score for p in preds])
    fast = PathFigures(
        build_s=build_s,
        build_peak_mb=build_peak,
        score_ms=score_ms,
        metrics=metrics(tests, scores, np.stack([p.map224 for p in preds])),
        image_scores=scores.tolist(),
        bank_size=sum(len(ix) for ix in scorer.bank.indices),
    )
    with serving(banks, cfg.device) as url:
        service = service_latency(url, cfg.category, [s.sample for s in tests], n=len(tests))
    one_bank = len(method.members) == 1
    indexes = in_worker(index_figures, scorer, tests, cfg) if one_bank else []
    rates = {bs: in_worker(throughput, scorer, tests, bs) for bs in cfg.batch_sizes}

    reference: PathFigures | None = None
    diff: float | None = None
    baseline: BaselineReport | None = None
    if cfg.reference and one_bank:
        reference, ref = reference_path(
            method.name, options.get(method.name, {}), weights, train, tests, cfg, work
        )
        diff = float(np.abs(scores - np.array(reference.image_scores)).max())
        if method.name == BASELINE_METHOD:
            baseline = BaselineReport(
                options=ref.extractor.spec.options,
                weights=ref.extractor.weights.kind,
                weights_note=note,
                reused=True,
                figures=reference,
            )
    members = [
        MemberInfo(
            extractor=e.spec.extractor,
            options=e.spec.options,
            weights=e.weights.kind,
            index_kind=ix.kind,
            size=len(ix),
            dim=ix.dim,
        )
        for e, ix in zip(scorer.extractors, scorer.bank.indices, strict=True)
    ]
    report = MethodReport(
        method=method.name,
        members=members,
        bank_size=fast.bank_size,
        dim="+".join(str(m.dim) for m in members),
        weights=weights.describe(),
        weights_note=note,
        fast=fast,
        reference=reference,
        service=service,
        max_image_score_diff=diff,
        indexes=indexes,
        throughput=rates,
    )
    return report, baseline


def measure_baseline(data: Path, work: Path, tests: list[BenchSample], cfg: BenchConfig) -> BaselineReport:
    """BTF's reference recipe of :data:`BASELINE_METHOD` (its default options: wide_resnet50_2), after a
    warm-up, with the weights that method runs with here."""
    method = parse_method(BASELINE_METHOD)
    train = list_samples(data, cfg.category, "train", kinds=[GOOD])
    weights, note, warm = member_extractors(method, {}, cfg)
    in_worker(warm_up, warm, train[: cfg.batch_size], method.scoring(), cfg.coreset)
    del warm
    figures, ref = reference_path(BASELINE_METHOD, {}, weights, train, tests, cfg, work)
    return BaselineReport(
        options=ref.extractor.spec.options,
        weights=ref.extractor.weights.kind,
        weights_note=note,
        reused=False,
        figures=figures,
    )


def against(m: MethodReport, base: PathFigures) -> AgainstBaseline:
    """A method's service, in-process and build figures over the baseline's."""
    per_sample = base.score_ms["total"]
    return AgainstBaseline(
        service_p50=m.service.p50_ms / per_sample,
        service_mean=m.service.mean_ms / per_sample,
        predict=m.fast.score_ms["total"] / per_sample,
        build=m.fast.build_total_s / base.build_total_s,
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
    methods = list(dict.fromkeys(parse_method(m).name for m in cfg.methods))  # InputError naming a bad one
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
        threads=thread_info(),
        methods=[],
    )
    for name in methods:
        method_report, baseline = bench_method(parse_method(name), data, work, tests, cfg)
        report.methods.append(method_report)
        report.baseline = report.baseline or baseline
        emit(format_method(method_report))
    if cfg.reference:
        if report.baseline is None:
            report.baseline = measure_baseline(data, work, tests, cfg)
        for m in report.methods:
            m.against_baseline = against(m, report.baseline.figures)
    emit(format_summary(report))
    if cfg.memory_categories:
        report.service_rss_method = methods[0]
        first = banks_dir(work, methods[0])
        report.service_rss_mb = service_rss(first, cfg.category, cfg.memory_categories, cfg.device)
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


def _times(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}x"


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


def _weights_mark(note: str | None) -> str:
    return f" [{note}]" if note else ""


def format_method(r: MethodReport) -> str:
    ref = r.reference
    banks = " + ".join(f"{m.extractor} {m.size} x {m.dim} ({m.index_kind})" for m in r.members)
    weights = ", ".join(f"{m.extractor} {m.weights}" for m in r.members)
    head = f"## {r.method}{_weights_mark(r.weights_note)}: bank {banks}"
    if len(r.members) > 1:
        head += f", {r.bank_size} vectors in all"
    out = [f"{head}; weights {weights}", ""]
    rows = _stage_rows(r.fast.build_s, ref.build_s if ref else None, BUILD_STAGES, ".2f")
    rows.append(
        ("peak RSS MiB", f"{r.fast.build_peak_mb:.0f}", _num(ref.build_peak_mb if ref else None, ".0f"), "")
    )
    no_ref = "" if ref else "; reference: one-bank methods only" if len(r.members) > 1 else ""
    out += [f"build (seconds; fast: build_bank's stages{no_ref})", "", _table(rows), ""]
    rows = _stage_rows(r.fast.score_ms, ref.score_ms if ref else None, SCORE_STAGES, ".1f")
    ref_total = ref.score_ms["total"] if ref else None
    s = r.service
    for name, v in (("p50", s.p50_ms), ("p95", s.p95_ms), ("mean", s.mean_ms)):
        rows.append((f"service {name}", f"{v:.1f}", "-", _ratio(v, ref_total)))
    out += [
        "score one sample (ms, mean over the test split; fast: predict's stages, in a worker thread as the "
        f"service; service: POST /score through uvicorn, map=png, {s.n} requests)",
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
    out += [_table(rows), ""]
    if r.indexes:
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
        out += ["index kinds over the fast bank", "", _table(rows), ""]
    else:
        out += ["index kinds: - (one-bank methods only)", ""]
    out += ["batching (samples/s of predict, whole test split)", ""]
    rows = [("batch size", "samples/s")] + [(bs, f"{v:.2f}") for bs, v in r.throughput.items()]
    out += [_table(rows), ""]
    return "\n".join(out)


def format_summary(report: BenchReport) -> str:
    """Every method against the baseline, the service's ratio first: it is the path a line uses."""
    base = report.baseline
    if base is None:
        out = ["## every method (no baseline: --no-reference)", ""]
    else:
        backbone = base.options.get("rgb", {}).get("backbone", "?")
        b = base.figures
        out = [
            f"## against BTF's reference recipe ({base.method}, {backbone}, one sample at a time)"
            + _weights_mark(base.weights_note),
            "",
            f"baseline{' (the rgb+fpfh reference path above)' if base.reused else ''}: build "
            f"{b.build_total_s:.2f} s in all, {b.score_ms['total']:.1f} ms per sample (mean, in-process), "
            f"bank {b.bank_size} vectors",
            "",
        ]
    rows: list[tuple[object, ...]] = [
        (
            "method",
            "service p50 / BTF",
            "service p50 ms",
            "service mean ms",
            "service mean / BTF",
            "build s",
            "build / BTF",
            "predict ms",
            "predict / BTF",
            "bank vectors",
            "I-AUROC",
            "AU-PRO",
        )
    ]
    for m in report.methods:
        x = m.against_baseline
        rows.append(
            (
                m.method + (" (random init)" if m.weights_note else ""),
                _times(x and x.service_p50),
                f"{m.service.p50_ms:.1f}",
                f"{m.service.mean_ms:.1f}",
                _times(x and x.service_mean),
                f"{m.fast.build_total_s:.2f}",
                _times(x and x.build),
                f"{m.fast.score_ms['total']:.1f}",
                _times(x and x.predict),
                m.bank_size,
                f"{m.fast.metrics['image_auroc']:.4f}",
                f"{m.fast.metrics['au_pro']:.4f}",
            )
        )
    if base is not None:
        b = base.figures
        rows.append(
            (
                f"BTF reference: {base.method}" + (" (random init)" if base.weights_note else ""),
                "-",
                "-",
                "-",
                "-",
                f"{b.build_total_s:.2f}",
                "1.000x",
                f"{b.score_ms['total']:.1f}",
                "1.000x",
                b.bank_size,
                f"{b.metrics['image_auroc']:.4f}",
                f"{b.metrics['au_pro']:.4f}",
            )
        )
    out += [
        _table(rows),
        "",
        "service: POST /score through uvicorn (multipart upload, PNG map), one client, over the baseline's "
        "mean ms per sample; build: build_bank's stages in all (validation thresholds included) over BTF's "
        "loop; predict: predict() of one sample in a worker thread; I-AUROC, AU-PRO: each method's fast "
        "path; (random init): default weights that cannot load here, random:0 stood in, timings only, "
        f"detection figures meaningless. Threads: {report.threads}.",
        "",
    ]
    return "\n".join(out)


def format_memory(report: BenchReport) -> str:
    m = report.service_rss_mb
    return (
        f"service resident size with {m.get('categories', 0):.0f} categories of {report.service_rss_method} "
        f"(the first method's bank): {m['start']:.0f} MiB at start, {m['loaded']:.0f} MiB with the banks "
        f"loaded, {m['warm']:.0f} MiB after warm-up\n"
    )


def _bar(items: Sequence[Any], cfg: BenchConfig, desc: str) -> Any:
    return tqdm(items, desc=desc, unit="sample", disable=not cfg.progress, leave=False)
