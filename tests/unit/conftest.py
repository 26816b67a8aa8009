"""The library's tests build their bank from library parts only (features, coreset, FAISS index, bank
format): no application code, so a change in the offline commands cannot hide a library bug."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchbank import bank as bankfmt
from patchbank.coreset import CoresetSpec, create_sampler
from patchbank.data import digest, list_samples
from patchbank.extract import extract_all
from patchbank.features import create_extractor
from patchbank.index import PatchIndex
from patchbank.scorer import score_patches
from tests.conftest import CATEGORY


@pytest.fixture(scope="session")
def library_bank(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bankfmt.Manifest]:
    """An FPFH bank of the demo category (10% coreset), thresholds at the held-out goods' maxima."""
    banks = tmp_path_factory.mktemp("library-banks")
    extractor = create_extractor("fpfh")
    train = list_samples(demo_root, CATEGORY, "train")
    (feats,), _ = extract_all([extractor], train, progress=False)
    flat = feats.reshape(-1, extractor.dim)
    spec = CoresetSpec(ratio=0.1, seed=0)
    sampler = create_sampler(spec, progress=False)
    rows = sampler.run(flat)
    index = PatchIndex(flat[rows], rows, "flat")
    (val,), _ = extract_all([extractor], list_samples(demo_root, CATEGORY, "validation"), progress=False)
    held = score_patches(index, val)
    maxima = held.maps.reshape(len(held.maps), -1).max(axis=1)
    image = [float(v) for v in held.image]
    manifest = bankfmt.Manifest(
        category=CATEGORY,
        version="v0000",
        created_at=bankfmt.now_utc(),
        method="fpfh",
        members=[
            bankfmt.Member(
                features=extractor.spec,
                weights=extractor.weights,
                index_kind=index.kind,
                coreset=bankfmt.CoresetInfo(
                    spec=spec, n_patches=len(flat), size=len(rows), projected_dim=sampler.projected_dim
                ),
            )
        ],
        training=bankfmt.TrainingInfo(
            n_samples=len(train), samples=[r.name for r in train], digest=digest(train)
        ),
        score_stats=bankfmt.ScoreStats(
            source="validation",
            n=len(image),
            image_scores=image,
            map_maxima=[float(v) for v in maxima],
            mean=float(np.mean(image)),
            std=float(np.std(image)),
            quantiles={"max": max(image)},
        ),
        thresholds=bankfmt.Thresholds(image=max(image), pixel=float(maxima.max()), rule="held-out maxima"),
        libraries=bankfmt.library_versions(),
    )
    written = bankfmt.write_version(banks, manifest, lambda d: index.save(d / bankfmt.INDEX_FILE))
    return banks, written
