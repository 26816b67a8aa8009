"""Banks load only from where they belong: a version is a version name (vNNNN) whose directory resolves inside
``BANKS/<category>/``, and every file the loader opens is listed and checksummed in the manifest. Bank files
are written with the permissions the process umask gives."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from patchbank import bank as bankfmt
from patchbank.errors import BankError
from patchbank.loaded import LoadedBanks
from tests.conftest import CATEGORY

OTHER_CATEGORY = "other_part"


@pytest.fixture
def banks(library_bank: tuple[Path, bankfmt.Manifest], tmp_path: Path) -> Path:
    """A private copy of the session's bank directory, safe to damage."""
    dst = tmp_path / "banks"
    shutil.copytree(library_bank[0], dst)
    return dst


def v1(banks: Path) -> Path:
    return banks / CATEGORY / "v0001"


def resign(vdir: Path, **changes: object) -> None:
    """Rewrite a version's manifest with ``changes`` and a matching manifest.sha256 (a consistent forgery)."""
    data = json.loads((vdir / bankfmt.MANIFEST).read_text())
    for key, value in changes.items():
        if key == "index_file":
            data["members"][0]["index_file"] = value
        elif key == "threshold":
            data["thresholds"]["image"] = value
        else:
            data[key] = value
    text = json.dumps(data, indent=2)
    (vdir / bankfmt.MANIFEST).write_text(text)
    (vdir / bankfmt.MANIFEST_SUM).write_text(hashlib.sha256(text.encode()).hexdigest() + "\n")


def planted(dst: Path, source: Path, version: str) -> Path:
    """A copy of ``source`` at ``dst`` whose manifest claims ``version`` (so only the location rule can refuse
    it) and whose threshold would call every part OK."""
    shutil.copytree(source, dst)
    resign(dst, version=version, threshold=1e9)
    return dst


def refusal(banks: Path, version: str | None = None) -> str:
    with pytest.raises(BankError) as info:
        bankfmt.load_bank(banks, CATEGORY, version)
    message = str(info.value)
    assert str(banks) not in message, "a refusal must not show the server's banks path"
    return message


@pytest.mark.parametrize("content", ["../x", "ABS", "v1/../../y", "v0001/", "./v0001", "v0001/."])
def test_an_active_file_naming_a_path_is_refused(banks: Path, tmp_path: Path, content: str) -> None:
    if content == "ABS":
        content = str(tmp_path / "elsewhere" / "v0001")
        planted(Path(content), v1(banks), content)
    elif ".." in content:
        (banks / CATEGORY / "v1").mkdir()
        planted(Path(os.path.normpath(banks / CATEGORY / content)), v1(banks), content)
    (banks / CATEGORY / bankfmt.ACTIVE).write_text(content + "\n")
    message = refusal(banks)
    assert f"{CATEGORY}/ACTIVE" in message and "not a version name" in message


@pytest.mark.parametrize("version", ["../x", "v0001\n", "v0001/", "v٠٠٠١", ""])
def test_a_requested_version_that_is_not_a_version_name_is_refused(banks: Path, version: str) -> None:
    planted(banks / "x", v1(banks), "../x")
    assert "not a version name" in refusal(banks, version)


def test_a_version_dir_linked_outside_the_category_is_refused(banks: Path, tmp_path: Path) -> None:
    outside = planted(tmp_path / "elsewhere" / "v0002", v1(banks), "v0002")
    (banks / CATEGORY / "v0002").symlink_to(outside, target_is_directory=True)
    assert "resolves outside" in refusal(banks, "v0002")
    (banks / CATEGORY / bankfmt.ACTIVE).write_text("v0002\n")
    message = refusal(banks)
    assert "resolves outside" in message and f"{CATEGORY}/ACTIVE" in message
    assert bankfmt.versions(banks, CATEGORY) == ["v0001"]
    with pytest.raises(BankError, match="resolves outside"):
        bankfmt.set_active(banks, CATEGORY, "v0002")
    with pytest.raises(BankError, match="not a version name"):
        bankfmt.set_active(banks, CATEGORY, "../x")


def test_an_index_file_outside_the_version_is_refused(banks: Path) -> None:
    vdir = banks / CATEGORY / "v0003"
    shutil.copytree(v1(banks), vdir)
    shutil.copy(vdir / bankfmt.INDEX_FILE, banks / CATEGORY / "other.faiss")
    resign(vdir, version="v0003", index_file="../other.faiss")
    assert "not a plain file name" in refusal(banks, "v0003")


def test_a_listed_path_is_refused(banks: Path) -> None:
    """Listing the outside file with its right checksum does not make it part of the version."""
    vdir = banks / CATEGORY / "v0003"
    shutil.copytree(v1(banks), vdir)
    shutil.copy(vdir / bankfmt.INDEX_FILE, banks / CATEGORY / "other.faiss")
    digest = hashlib.sha256((vdir / bankfmt.INDEX_FILE).read_bytes()).hexdigest()
    resign(vdir, version="v0003", index_file="../other.faiss", files={"../other.faiss": digest})
    assert "not a plain file name" in refusal(banks, "v0003")


def test_an_index_file_not_checksummed_is_refused(banks: Path) -> None:
    vdir = banks / CATEGORY / "v0004"
    shutil.copytree(v1(banks), vdir)
    shutil.copy(vdir / bankfmt.INDEX_FILE, vdir / "extra.faiss")
    resign(vdir, version="v0004", index_file="extra.faiss")
    assert "not among the manifest's checksummed files" in refusal(banks, "v0004")


def test_a_listed_file_linked_outside_the_version_is_refused(banks: Path, tmp_path: Path) -> None:
    vdir = banks / CATEGORY / "v0005"
    shutil.copytree(v1(banks), vdir)
    outside = tmp_path / "index.faiss"
    (vdir / bankfmt.INDEX_FILE).rename(outside)
    (vdir / bankfmt.INDEX_FILE).symlink_to(outside)
    resign(vdir, version="v0005")
    assert "resolves outside" in refusal(banks, "v0005")


def test_a_valid_version_still_loads(banks: Path) -> None:
    vdir = banks / CATEGORY / "v0006"
    shutil.copytree(v1(banks), vdir)
    resign(vdir, version="v0006")
    assert bankfmt.load_bank(banks, CATEGORY).manifest.version == "v0001"
    assert bankfmt.load_bank(banks, CATEGORY, "v0006").manifest.version == "v0006"
    bankfmt.set_active(banks, CATEGORY, "v0006")
    assert bankfmt.active_version(banks, CATEGORY) == "v0006"


def test_loaded_banks_report_a_refusal_keep_serving_and_clear_it_later(banks: Path) -> None:
    manifest = bankfmt.read_manifest(v1(banks))
    bankfmt.write_version(
        banks, manifest.model_copy(update={"category": OTHER_CATEGORY}), bankfmt.copy_files_from(v1(banks))
    )
    (banks / OTHER_CATEGORY / bankfmt.ACTIVE).write_text("../puck/v0001\n")
    loaded = LoadedBanks(banks)
    errors = loaded.load_all()
    assert loaded.categories() == [CATEGORY]
    assert set(errors) == {OTHER_CATEGORY} and f"{OTHER_CATEGORY}/ACTIVE" in errors[OTHER_CATEGORY]
    assert str(banks) not in errors[OTHER_CATEGORY]

    with pytest.raises(BankError, match="not a version name"):
        loaded.reload(CATEGORY, "../x", origin="named in Redis")
    assert loaded.version_of(CATEGORY) == "v0001"
    assert "named in Redis" in loaded.errors[CATEGORY]

    vdir = banks / CATEGORY / "v0002"
    shutil.copytree(v1(banks), vdir)
    resign(vdir, version="v0002")
    loaded.reload(CATEGORY, "v0002")
    assert loaded.version_of(CATEGORY) == "v0002" and CATEGORY not in loaded.errors


@pytest.fixture
def umask() -> Iterator[None]:
    saved = os.umask(0o022)
    os.umask(saved)
    yield
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize(("mask", "dirs", "files"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_bank_files_follow_the_umask(banks: Path, mask: int, dirs: int, files: int) -> None:
    manifest = bankfmt.read_manifest(v1(banks))
    os.umask(mask)
    written = bankfmt.write_version(banks, manifest, bankfmt.copy_files_from(v1(banks)))
    fresh = bankfmt.write_version(
        banks / "new", manifest, lambda d: shutil.copyfile(v1(banks) / bankfmt.INDEX_FILE, d / "index.faiss")
    )
    vdir = banks / CATEGORY / written.version
    assert mode(vdir) == dirs and mode(banks / "new" / CATEGORY / fresh.version) == dirs
    assert mode(banks / CATEGORY / bankfmt.ACTIVE) == files
    assert mode(banks / "new" / CATEGORY / bankfmt.ACTIVE) == files
    for name in (bankfmt.MANIFEST, bankfmt.MANIFEST_SUM):
        assert mode(vdir / name) == files
    for name in (bankfmt.MANIFEST, bankfmt.MANIFEST_SUM, bankfmt.INDEX_FILE):
        assert mode(banks / "new" / CATEGORY / fresh.version / name) == files
    assert not [p for p in (banks / CATEGORY).iterdir() if p.name.startswith(".")]
