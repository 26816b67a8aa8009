"""Features of many samples from disk: read, prepare, extract in batches, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from patchbank.data import SampleRef
from patchbank.errors import DataError, InputError
from patchbank.features.base import FeatureExtractor, extract_side_by_side
from patchbank.predict import Sample
from patchbank.preprocess import Prepared


def load_prepared(ref: SampleRef, size: int) -> Prepared:
    """Read one sample from disk and prepare it as the service does; DataError names its files."""
    try:
        return Sample.from_ref(ref).prepare(size)
    except InputError as exc:
        raise DataError(str(exc)) from exc


def iter_batches(
    extractors: Sequence[FeatureExtractor],
    refs: Sequence[SampleRef],
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "features",
    part: Callable[[Sequence[Prepared]], np.ndarray | None] | None = None,
) -> Iterator[tuple[list[SampleRef], list[Prepared], list[np.ndarray], np.ndarray | None]]:
    """Yield (refs, prepared, each extractor's (B, 784, D) float32 features, ``part(prepared)``) batch by batch;
    every sample is read once for all extractors (they share its resolution), reading overlaps extraction,
    and the extractors and ``part`` (the patches on the part) run side by side (:func:`extract_side_by_side`)."""
    size = extractors[0].image_size
    bar = tqdm(total=len(refs), desc=desc, unit="sample", disable=not progress)
    with ThreadPoolExecutor(max_workers=2) as pool:
        chunks = [list(refs[i : i + batch_size]) for i in range(0, len(refs), batch_size)]
        pending = pool.map(lambda chunk: [load_prepared(r, size) for r in chunk], chunks)
        for chunk, prepared in zip(chunks, pending, strict=True):
            feats, extra = extract_side_by_side(extractors, prepared, part)
            bar.update(len(chunk))
            yield chunk, prepared, feats, extra
    bar.close()


def extract_all(
    extractors: Sequence[FeatureExtractor],
    refs: Sequence[SampleRef],
    batch_size: int = 8,
    progress: bool = True,
    part: Callable[[Sequence[Prepared]], np.ndarray | None] | None = None,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Each extractor's (N, 784, D) float32 features of every sample, in order; and, given ``part`` (the
    patches on the part), its results on every batch concatenated (None when it returns None)."""
    feats, extra = [], []
    for _, _, f, e in iter_batches(extractors, refs, batch_size, progress, "features", part):
        feats.append(f)
        extra.append(e)
    joined = None if any(e is None for e in extra) else np.concatenate(extra)  # type: ignore[arg-type]
    return [np.concatenate([b[i] for b in feats]) for i in range(len(extractors))], joined
