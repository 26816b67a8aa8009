"""Features of many samples from disk: read, prepare, extract in batches, with a progress bar."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from patchbank.data import SampleRef
from patchbank.errors import DataError, InputError
from patchbank.features.base import FeatureExtractor, PartFinder, extract_side_by_side
from patchbank.predict import Sample
from patchbank.preprocess import Prepared

LOOK_AHEAD = 2  # batches read (and their parts found) ahead of the one being extracted


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
    part: PartFinder | None = None,
) -> Iterator[tuple[list[SampleRef], list[Prepared], list[np.ndarray], np.ndarray | None]]:
    """Yield (refs, prepared, each extractor's (B, 784, D) float32 features, ``part(prepared)``) batch by batch.

    Every sample is read once for all extractors (they share its resolution). Reading and finding the part
    (``part``: the patches on the part) run up to :data:`LOOK_AHEAD` batches ahead in two threads, beside the
    extraction of earlier batches, so the extractors that wait for the part need not; the extractors run side
    by side (:func:`extract_side_by_side`)."""
    size = extractors[0].image_size

    def load(chunk: list[SampleRef]) -> tuple[list[Prepared], np.ndarray | None]:
        prepared = [load_prepared(r, size) for r in chunk]
        return prepared, (part(prepared) if part is not None else None)

    chunks = [list(refs[i : i + batch_size]) for i in range(0, len(refs), batch_size)]
    bar = tqdm(total=len(refs), desc=desc, unit="sample", disable=not progress)
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = deque(pool.submit(load, chunk) for chunk in chunks[:LOOK_AHEAD])
        for i, chunk in enumerate(chunks):
            prepared, found = pending.popleft().result()
            if i + LOOK_AHEAD < len(chunks):
                pending.append(pool.submit(load, chunks[i + LOOK_AHEAD]))
            feats, _ = extract_side_by_side(extractors, prepared, found)
            bar.update(len(chunk))
            yield chunk, prepared, feats, found
    bar.close()


def extract_all(
    extractors: Sequence[FeatureExtractor],
    refs: Sequence[SampleRef],
    batch_size: int = 8,
    progress: bool = True,
    part: PartFinder | None = None,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Each extractor's (N, 784, D) float32 features of every sample, in order; and, given ``part`` (the
    patches on the part), its results on every batch concatenated (None when it returns None)."""
    feats, extra = [], []
    for _, _, f, e in iter_batches(extractors, refs, batch_size, progress, "features", part):
        feats.append(f)
        extra.append(e)
    joined = None if any(e is None for e in extra) else np.concatenate(extra)  # type: ignore[arg-type]
    return [np.concatenate([b[i] for b in feats]) for i in range(len(extractors))], joined
