"""The bank format: versions, ACTIVE, checksums, atomic writes, spec checks -- on a real built bank."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from patchbank import bank as bankfmt
from patchbank.data import list_samples
from patchbank.errors import BankError
from patchbank.extract import load_prepared
from patchbank.features import create_extractor
from patchbank.loaded import LoadedBanks
from patchbank.scorer import BankScorer, load_scorer
from tests.conftest import CATEGORY


@pytest.fixture
def banks_copy(library_bank: tuple[Path, bankfmt.Manifest], tmp_path: Path) -> Path:
    """A private copy of the session's bank directory, safe to damage."""
    banks, _ = library_bank
    dst = tmp_path / "banks"
    shutil.copytree(banks, dst)
    return dst


def test_loaded_bank_holds_the_training_patches(library_bank: tuple[Path, bankfmt.Manifest]) -> None:
    banks, manifest = library_bank
    (index,) = bankfmt.load_bank(banks, CATEGORY).indices
    assert len(index) == manifest.members[0].coreset.size
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


def test_another_feature_spec_is_refused(library_bank: tuple[Path, bankfmt.Manifest]) -> None:
    banks, _ = library_bank
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
    data["method"] = features["extractor"] = "rgb+fpfh"
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
    data["features"]["method"] = data["features"].pop("extractor")  # as formats 1 and 2 named it
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
    assert old_scorer.bank.manifest.members[0].features.extractor == "fpfh"
    np.testing.assert_array_equal(old_scorer.score(prepared).maps, new_scores.maps)
    registry = LoadedBanks(banks_copy)
    registry.reload(CATEGORY, "v0001")
    registry.reload(CATEGORY, "v0009")
    assert len(registry.extractors()) == 1


def test_manifest_round_trips_in_format_3(library_bank: tuple[Path, bankfmt.Manifest]) -> None:
    banks, manifest = library_bank
    on_disk = json.loads((banks / CATEGORY / manifest.version / bankfmt.MANIFEST).read_text())
    assert on_disk["format_version"] == 3 and on_disk["members"][0]["features"]["extractor"] == "fpfh"
    assert bankfmt.read_manifest(banks / CATEGORY / manifest.version) == manifest


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
