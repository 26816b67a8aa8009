"""What build-bank writes into a bank's manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchbank import bank as bankfmt
from patchbank_builder.build import BuildResult
from tests.conftest import CATEGORY


def test_manifest_records_the_build(fpfh_build: tuple[Path, BuildResult]) -> None:
    banks, result = fpfh_build
    m = result.manifest
    assert (m.category, m.version, m.method) == (CATEGORY, "v0001", "fpfh")
    assert bankfmt.active_version(banks, CATEGORY) == "v0001"
    (member,) = m.members
    assert m.fusion is None and member.index_file == bankfmt.INDEX_FILE
    assert member.features.dim == 33 and member.coreset.n_patches == 6 * 784
    assert member.coreset.size == int(0.1 * 6 * 784)
    assert member.coreset.spec.ratio == 0.1 and m.training.n_samples == 6 and len(m.training.digest) == 64
    assert {"torch", "faiss-cpu", "open3d", "numpy"} <= set(m.libraries)
    assert set(m.files) == {bankfmt.INDEX_FILE}
    assert m.score_stats.source == "validation" and m.score_stats.n == 4
    assert m.thresholds.image == pytest.approx(np.quantile(m.score_stats.image_scores, 0.99))
    assert member.weights.kind == "none" and m.calibration is None
    assert member.held_out is not None and member.held_out.image_scores == m.score_stats.image_scores
    assert member.features.options["feature_radius"] == 0.25
    assert (
        member.features.options
        == bankfmt.read_manifest(banks / CATEGORY / "v0001").members[0].features.options
    )
