"""``patchbank preprocess``'s library (:mod:`patchbank.dataset_prep`) on generated data: the background
exactly zero and the part kept (against the generator's own heights), a stray cluster dropped, files linked,
reruns that rewrite nothing, an interrupted run that resumes, parameters refused unless forced."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from patchbank import dataset_prep
from patchbank.camera_parameters import CALIBRATION_FILE
from patchbank.dataset_prep import (
    RECORD_FILE,
    TMP_SUFFIX,
    PrepOptions,
    PublishedBackground,
    preprocess_dataset,
    read_record,
)
from patchbank.errors import DataError, InputError
from patchbank_synthetic.demo_data import generate, render_sample

SIZES = {"puck": (120, 120), "bracket": (160, 120)}  # (width, height)
COUNTS = {"n_train": 2, "n_validation": 1, "n_test": 1}  # 9 samples a category
SAMPLES = 9
# BTF's values but DBSCAN's 30 points: at 120 pixels (2 mm apart) a 6 mm ball holds fewer than 30 points
OPTIONS = PrepOptions(background=PublishedBackground(cluster_min_points=10))
PART_MM, TABLE_MM = 7.0, 3.0  # clearly above / below the 5 mm plane distance (depth noise is below 1 mm)
STRAY = "puck/train/good/xyz/001.tiff"  # a 6 x 6 block of its table lifted 40 mm: a cluster of its own


def _sample_of(path: Path) -> dict[str, object]:
    """render_sample's arguments for the file ``<category>/<split>/<kind>/xyz/NNN.tiff``."""
    category, split, kind, _, name = path.parts[-5:]
    return {"category": category, "kind": kind, "split": split, "index": int(Path(name).stem)}


def _lift_a_table_block(path: Path, seed: int) -> tuple[slice, slice]:
    """Move a 6 x 6 block of valid table points 40 mm towards the camera; returns where it is."""
    xyz = tifffile.imread(path)
    height = render_sample(**_sample_of(path), size=SIZES["puck"], seed=seed).height  # type: ignore[arg-type]
    table = (height == 0) & (xyz != 0).all(axis=2)
    for r in range(12, 100):
        for c in range(12, 100):
            if table[r : r + 6, c : c + 6].all():
                block = (slice(r, r + 6), slice(c, c + 6))
                xyz[block] *= 1 - 0.04 / float(xyz[block][..., 2].mean())
                tifffile.imwrite(path, xyz, photometric="rgb")
                return block
    raise AssertionError("no 6 x 6 block of table found")


@pytest.fixture(scope="module", params=[0, 3], ids=lambda s: f"seed{s}")
def prepared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, int, tuple[slice, slice]]:
    """(SRC, OUT, seed, the stray block): two categories generated, one stray cluster, preprocessed."""
    seed = request.param
    src = tmp_path_factory.mktemp("src")
    generate(
        src,
        list(SIZES),
        size=SIZES["puck"],
        sizes={"bracket": SIZES["bracket"]},
        seed=seed,
        progress=False,
        **COUNTS,
    )
    block = _lift_a_table_block(src / STRAY, seed)
    out = tmp_path_factory.mktemp("prep") / "out"
    done = preprocess_dataset(src, out, options=OPTIONS, progress=False)
    assert [(c.category, c.samples, c.done, c.skipped) for c in done] == [
        ("bracket", SAMPLES, SAMPLES, 0),
        ("puck", SAMPLES, SAMPLES, 0),
    ]
    return src, out, seed, block


def test_the_background_is_exactly_zero_and_the_part_is_kept(
    prepared: tuple[Path, Path, int, tuple[slice, slice]],
) -> None:
    src, out, seed, block = prepared
    clouds = sorted(src.rglob("xyz/*.tiff"))
    assert len(clouds) == 2 * SAMPLES
    for path in clouds:
        rel = path.relative_to(src)
        before, after = tifffile.imread(path), tifffile.imread(out / rel)
        assert after.dtype == np.float32 and after.shape == before.shape
        kept = (after != 0).all(axis=2)
        assert np.array_equal(after[kept], before[kept])  # part points untouched, bit for bit
        assert not after[~kept].any()  # everything else exactly (0, 0, 0)
        args = _sample_of(path)
        truth = render_sample(**args, size=SIZES[str(args["category"])], seed=seed)  # type: ignore[arg-type]
        valid = (before != 0).all(axis=2)
        if rel.as_posix() != STRAY:
            assert np.array_equal(truth.xyz, before)  # the heights belong to this very file
        part = valid & (truth.height > PART_MM * 1e-3)
        table = valid & (truth.height < TABLE_MM * 1e-3)
        assert part.sum() > 200 and table.sum() > 5000
        assert kept[part].all(), f"{rel}: {int((~kept[part]).sum())} part points removed"
        assert not kept[table].any(), f"{rel}: {int(kept[table].sum())} table points kept"
    stray = tifffile.imread(out / STRAY)
    assert not stray[block].any()


def test_every_other_file_is_a_link_to_its_source(
    prepared: tuple[Path, Path, int, tuple[slice, slice]],
) -> None:
    src, out, _, _ = prepared
    others = [p for p in src.rglob("*") if p.is_file() and p.parent.name != "xyz"]
    assert len(others) == 2 * (SAMPLES + 6 + 1)  # rgb, test gt, the calibration
    assert all(os.path.samefile(p, out / p.relative_to(src)) for p in others)
    assert (out / "bracket" / CALIBRATION_FILE).is_file()
    assert sorted(p.name for p in out.iterdir()) == [RECORD_FILE, "bracket", "puck"]


def test_a_rerun_rewrites_nothing(prepared: tuple[Path, Path, int, tuple[slice, slice]]) -> None:
    src, out, _, _ = prepared
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    done = preprocess_dataset(src, out, options=OPTIONS, progress=False)
    assert [(c.done, c.skipped, c.linked, c.copied) for c in done] == [(0, SAMPLES, 0, 0)] * 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    record = read_record(out)
    assert record is not None and record.options == OPTIONS and len(record.samples) == 2 * SAMPLES
    assert sum(c.kept for c in done) == sum(s.kept for s in record.samples.values())


def test_an_interrupted_run_resumes_where_it_stopped(
    prepared: tuple[Path, Path, int, tuple[slice, slice]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, reference, _, _ = prepared
    out = tmp_path / "out"
    real = dataset_prep.remove_background
    calls: list[int] = []
    stop_at = [4]  # the call that is interrupted (Ctrl-C)

    def stopping(xyz: np.ndarray, opts: object) -> np.ndarray:
        calls.append(1)
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt
        return real(xyz, opts)  # type: ignore[arg-type]

    monkeypatch.setattr(dataset_prep, "remove_background", stopping)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(src, out, ["puck"], OPTIONS, progress=False)
    record = read_record(out)
    assert record is not None and len(record.samples) == 3  # written on the way out
    assert not list(out.rglob(f"*{TMP_SUFFIX}"))
    first = {p: p.stat().st_mtime_ns for p in out.rglob("xyz/*.tiff")}
    assert len(first) == 3
    dead = out / "puck/test/good/xyz" / f".000.tiff.dead{TMP_SUFFIX}"  # what a killed run leaves
    dead.parent.mkdir(parents=True, exist_ok=True)
    dead.write_bytes(b"half")
    calls.clear()
    stop_at[0] = 0
    (done,) = preprocess_dataset(src, out, ["puck"], OPTIONS, progress=False)
    assert (done.done, done.skipped, len(calls)) == (SAMPLES - 3, 3, SAMPLES - 3)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    assert not dead.exists()
    for path in (reference / "puck").rglob("*"):  # the same files as one uninterrupted run
        if path.is_file():
            assert (out / path.relative_to(reference)).read_bytes() == path.read_bytes()


def test_other_parameters_are_refused_unless_forced(
    prepared: tuple[Path, Path, int, tuple[slice, slice]], tmp_path: Path
) -> None:
    src, reference, _, _ = prepared
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    other = PrepOptions(background=PublishedBackground(cluster_min_points=12), rgb="mask")
    with pytest.raises(
        InputError, match=r"background\.cluster_min_points: 10 -> 12; rgb: link -> mask.*--force"
    ):
        preprocess_dataset(src, out, ["bracket"], other, progress=False)
    (done,) = preprocess_dataset(src, out, ["bracket"], other, force=True, progress=False)
    assert (done.done, done.skipped) == (SAMPLES, 0)
    record = read_record(out)
    assert record is not None and record.options == other and len(record.samples) == SAMPLES
    for rgb in (src / "bracket").rglob("rgb/*.png"):  # mask: BTF's RGB, removed points black
        rel = rgb.relative_to(src)
        xyz_rel = rel.parent.parent / "xyz" / f"{rgb.stem}.tiff"
        removed = (tifffile.imread(src / xyz_rel) != 0).all(axis=2) & ~(
            tifffile.imread(out / xyz_rel) != 0
        ).all(axis=2)
        assert not os.path.samefile(rgb, out / rel)
        with Image.open(rgb) as a, Image.open(out / rel) as b:
            source, masked = np.asarray(a), np.asarray(b)
        assert removed.any() and not masked[removed].any()
        assert np.array_equal(masked[~removed], source[~removed])


def test_what_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "notes").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no category in the MVTec 3D-AD layout"):
        preprocess_dataset(src, tmp_path / "out")
    with pytest.raises(InputError, match="needs a folder apart from the source"):
        preprocess_dataset(src, src / "out")
    with pytest.raises(DataError, match="category 'nut' not found"):
        preprocess_dataset(src, tmp_path / "out", ["nut"])
    with pytest.raises(DataError, match="is not a directory"):
        preprocess_dataset(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_is_copied_where_links_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "a.png", tmp_path / "out" / "rgb" / "a.png"
    src.write_bytes(b"\x89PNG not really")

    def refuse(*args: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(dataset_prep.os, "link", refuse)
    assert dataset_prep.link_file(src, dst) == "copied"
    assert dst.read_bytes() == src.read_bytes() and not os.path.samefile(src, dst)
    assert dst.stat().st_mtime_ns == src.stat().st_mtime_ns
    assert dataset_prep.link_file(src, dst) == "present"
    src.write_bytes(b"\x89PNG changed")
    assert dataset_prep.link_file(src, dst) == "copied" and dst.read_bytes() == b"\x89PNG changed"


def test_a_sample_gone_from_the_source_is_removed_from_the_mirror(
    prepared: tuple[Path, Path, int, tuple[slice, slice]], tmp_path: Path
) -> None:
    reference_src, reference_out, _, _ = prepared
    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(reference_src / "puck", src / "puck")  # copies keep their modification times
    shutil.copytree(reference_out, out)
    for sub, suffix in (("rgb", "png"), ("xyz", "tiff")):
        (src / "puck/train/good" / sub / f"001.{suffix}").unlink()
    (done,) = preprocess_dataset(src, out, ["puck"], OPTIONS, progress=False)
    assert (done.done, done.skipped, done.removed) == (0, SAMPLES - 1, 1)
    assert sorted(p.name for p in (out / "puck/train/good/xyz").iterdir()) == ["000.tiff"]
    assert sorted(p.name for p in (out / "puck/train/good/rgb").iterdir()) == ["000.png"]
    record = read_record(out)
    assert record is not None and STRAY not in record.samples and len(record.samples) == 2 * SAMPLES - 1
