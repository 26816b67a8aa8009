"""Features of many samples from disk: read, prepare, extract in batches, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from patchbank.data import SampleRef, read_rgb, read_xyz
from patchbank.errors import DataError
from patchbank.features.base import FeatureExtractor
from patchbank.preprocess import Prepared, prepare


def load_prepared(ref: SampleRef, size: int) -> Prepared:
    """Read one sample from disk and prepare it; DataError names the file when rgb and xyz disagree."""
    image, xyz = read_rgb(ref.rgb), read_xyz(ref.xyz)
    (w, h), (xh, xw) = image.size, xyz.shape[:2]
    if abs(w / h - xw / xh) > 0.01 * (w / h):
        raise DataError(f"{ref.rgb} is {w}x{h} but {ref.xyz} is {xw}x{xh}: their aspect ratios differ")
    return prepare(image, xyz, size)


def iter_batches(
    extractor: FeatureExtractor,
    refs: Sequence[SampleRef],
    size: int,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "features",
) -> Iterator[tuple[list[SampleRef], list[Prepared], np.ndarray]]:
    """Yield (refs, prepared, (B, 784, D) float32 features) batch by batch; reading overlaps extraction."""
    bar = tqdm(total=len(refs), desc=desc, unit="sample", disable=not progress)
    with ThreadPoolExecutor(max_workers=2) as pool:
        chunks = [list(refs[i : i + batch_size]) for i in range(0, len(refs), batch_size)]
        pending = pool.map(lambda chunk: [load_prepared(r, size) for r in chunk], chunks)
        for chunk, prepared in zip(chunks, pending, strict=True):
            feats = extractor.extract(prepared)
            bar.update(len(chunk))
            yield chunk, prepared, feats
    bar.close()


def extract_all(
    extractor: FeatureExtractor,
    refs: Sequence[SampleRef],
    size: int,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """(N, 784, D) float32 features of every sample, in order."""
    return np.concatenate(
        [f for _, _, f in iter_batches(extractor, refs, size, batch_size, progress, desc="train features")]
    )
