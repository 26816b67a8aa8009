"""The bank format: versions, ACTIVE, checksums, atomic writes, spec checks -- on a real built bank."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bank_builder.build import BuildResult
from patchbank import bank as bankfmt
from patchbank.data import list_samples
from patchbank.errors import BankError
from patchbank.extract import load_prepared
from patchbank.features import create_extractor
from patchbank.registry import BankRegistry
from patchbank.scorer import BankScorer, load_scorer
from tests.conftest import CATEGORY


@pytest.fixture
def banks_copy(fpfh_build: tuple[Path, BuildResult], tmp_path: Path) -> Path:
    """A private copy of the session's bank directory, safe to damage."""
    banks, _ = fpfh_build
    dst = tmp_path / "banks"
    shutil.copytree(banks, dst)
    return dst


def test_manifest_records_what_the_issue_asks(fpfh_build: tuple[Path, BuildResult]) -> None:
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
    on_disk = json.loads((banks / CATEGORY / "v0001" / bankfmt.MANIFEST).read_text())
    assert on_disk["format_version"] == 2
    assert on_disk["members"][0]["features"]["options"]["feature_radius"] == 0.25


def test_loaded_bank_holds_the_training_patches(fpfh_build: tuple[Path, BuildResult]) -> None:
    banks, result = fpfh_build
    (index,) = bankfmt.load_bank(banks, CATEGORY).indices
    assert len(index) == result.manifest.members[0].coreset.size
    assert (index.ids >= 0).all() and (index.ids < 6 * 784).all()
    assert index.ids[0] == 0  # greedy k-center starts at the first patch


@pytest.mark.parametrize("victim", [bankfmt.INDEX_FILE, bankfmt.MANIFEST])
def test_a_flipped_byte_is_refused(banks_copy: Path, victim: str) -> None:
    path = banks_copy / CATEGORY / "v0001" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BankError, match="corrupt"):
        bankfmt.load_bank(banks_copy, CATEGORY)


def test_missing_bank_and_version_are_clear(banks_copy: Path) -> None:
    with pytest.raises(BankError, match=r"no bank for category .tire..*build-bank"):
        bankfmt.load_bank(banks_copy, "tire")
    with pytest.raises(BankError, match="v0042 not found"):
        bankfmt.load_bank(banks_copy, CATEGORY, "v0042")
    with pytest.raises(BankError, match="invalid category name"):
        bankfmt.load_bank(banks_copy, "../etc")


def test_another_feature_spec_is_refused(fpfh_build: tuple[Path, BuildResult]) -> None:
    banks, _ = fpfh_build
    bank = bankfmt.load_bank(banks, CATEGORY)
    other = create_extractor("fpfh", {"feature_radius": 0.5})
    with pytest.raises(
        BankError, match=r"built with features fpfh\(.*feature_radius=0.25.*but the extractor is"
    ):
        BankScorer(bank, [other])


def test_a_tampered_spec_with_fixed_checksums_is_refused(banks_copy: Path) -> None:
    """Rewriting the manifest consistently (new checksum) still cannot make the index another method's."""
    vdir = banks_copy / CATEGORY / "v0001"
    data = json.loads((vdir / bankfmt.MANIFEST).read_text())
    features = data["members"][0]["features"]
    features["dim"] = 1569
    data["method"] = features["method"] = "rgb+fpfh"
    manifest = bankfmt.Manifest.model_validate(data)
    bankfmt.write_version(banks_copy, manifest, bankfmt.copy_files_from(vdir))
    with pytest.raises(BankError, match=r"index.faiss holds .* x 33, manifest says .* x 1569"):
        load_scorer(banks_copy, CATEGORY)


def test_a_format_1_bank_still_loads_and_scores_alike(banks_copy: Path, demo_root: Path) -> None:
    """A bank written before late fusion (format 1: features, weights, index and coreset at the top) is read
    as a one-member bank and scores exactly as the same bank in format 2; its spec lacks options added since
    (``background``), which count at their defaults, so a serving registry shares one extractor for both."""
    vdir = banks_copy / CATEGORY / "v0001"
    data = json.loads((vdir / bankfmt.MANIFEST).read_text())
    member = data.pop("members")[0]
    data.update(
        format_version=1,
        features=member["features"],
        weights=member["weights"],
        index_kind=member["index_kind"],
        coreset=member["coreset"],
    )
    del data["features"]["options"]["background"]
    for key in ("fusion", "calibration"):
        data.pop(key)
    old = banks_copy / CATEGORY / "v0009"
    shutil.copytree(vdir, old)
    data["version"] = "v0009"
    text = json.dumps(data, indent=2)
    (old / bankfmt.MANIFEST).write_text(text)
    (old / bankfmt.MANIFEST_SUM).write_text(hashlib.sha256(text.encode()).hexdigest() + "\n")
    sample = list_samples(demo_root, CATEGORY, "test")[-1]
    prepared = [load_prepared(sample, 224)]
    new_scores = load_scorer(banks_copy, CATEGORY, "v0001").score(prepared)
    old_scorer = load_scorer(banks_copy, CATEGORY, "v0009")
    assert old_scorer.bank.manifest.members[0].features.method == "fpfh"
    np.testing.assert_array_equal(old_scorer.score(prepared).maps, new_scores.maps)
    registry = BankRegistry(banks_copy)
    registry.reload(CATEGORY, "v0001")
    registry.reload(CATEGORY, "v0009")
    assert len(registry.extractors()) == 1


def test_versions_are_new_directories_and_writes_are_atomic(banks_copy: Path) -> None:
    vdir = banks_copy / CATEGORY / "v0001"
    manifest = bankfmt.read_manifest(vdir)
    second = bankfmt.write_version(banks_copy, manifest, bankfmt.copy_files_from(vdir))
    assert second.version == "v0002" and bankfmt.active_version(banks_copy, CATEGORY) == "v0002"
    assert bankfmt.load_bank(banks_copy, CATEGORY).manifest.files == manifest.files

    def fail(dst: Path) -> None:
        (dst / bankfmt.INDEX_FILE).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        bankfmt.write_version(banks_copy, manifest, fail)
    assert bankfmt.versions(banks_copy, CATEGORY) == ["v0001", "v0002"]
    assert not [p for p in (banks_copy / CATEGORY).iterdir() if p.name.startswith(".tmp-")]
    assert bankfmt.active_version(banks_copy, CATEGORY) == "v0002"
    bankfmt.set_active(banks_copy, CATEGORY, "v0001")  # rollback
    assert bankfmt.load_bank(banks_copy, CATEGORY).manifest.version == "v0001"
