"""Background removal applied once to a whole dataset and cached: ``patchbank preprocess SRC OUT``.

The published recipe is BTF's ``utils/preprocessing.py`` (repository eliahuhorwitz/3D-ADS), which M3DM
runs unchanged (nomewang/M3DM, ``utils/preprocessing.py``) on MVTec 3D-AD before training: for every xyz
TIFF, a RANSAC plane through the valid points of the image's 10-pixel border frame, every point within
5 mm of it set to (0, 0, 0), then DBSCAN (eps 6 mm, 30 points) and every point outside the largest cluster
set to (0, 0, 0); the TIFF is rewritten in place. Here each cloud is cleaned by Patchbank's own
:func:`patchbank.background.remove_background` (the function ``--fpfh.background`` applies per sample)
with those values (:class:`PublishedBackground`), and written to a mirror of the dataset:

- ``OUT`` mirrors ``SRC``: every category's clouds are rewritten as float32 (H, W, 3) TIFFs in metres,
  background (0, 0, 0), part points unchanged, under the same name (a cloud in another format becomes
  ``<stem>.tiff``); every other file (rgb, gt, calibration, class ids, readme...) is hard-linked, or copied
  where the filesystem refuses links. ``OUT``'s linked files *are* ``SRC``'s: replace them, never edit them
  in place.
- Cached and resumable: ``OUT/.patchbank-preprocess.json`` (:class:`PrepRecord`) holds the parameters
  and, per sample, the size and modification time of each source file and each output. A rerun skips
  the samples whose files are as recorded. Every file is written under a temporary name and renamed, and
  the record likewise, every :data:`FLUSH_SECONDS` and when the run ends or is interrupted: a rerun after
  an interruption redoes only what was not recorded. A sample gone from ``SRC`` is removed from ``OUT``.
- One parameter set per ``OUT``: other parameters than the record's are refused, unless ``force``, which
  redoes every sample with the new ones.

Where this differs from BTF's script:

- The plane: BTF fits it with Open3D's ``segment_plane`` (50 points per hypothesis, 4 mm inliers, no
  seed); :func:`patchbank.background.fit_plane` draws triples with a fixed seed and refits on the inliers,
  and removes the plane only when ``min_plane_fraction`` of the border points lie on it.
- Noise: BTF counts DBSCAN's noise label among the clusters, so when no cluster forms (or the noise
  outnumbers the largest) it keeps the noise; here only clusters count, and a sample left without a point
  is refused (:class:`DataError`) rather than written empty.
- RGB: BTF also blacks out the RGB pixels of the removed points; ``rgb="mask"`` does so. The default,
  ``"link"``, keeps the RGB as the line's camera sends it, which is what the service scores.
- Squares: BTF pads the rgb, xyz and gt images to a square whose side is the larger side rounded up to
  100 pixels; not done here: Patchbank resizes every image to 224 x 224 as it is, so a non-square category
  is scaled unevenly rather than padded, and its figures can differ from the published ones.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm.auto import tqdm

from patchbank.background import BackgroundOptions, remove_background
from patchbank.convert import categories_of
from patchbank.data import SPLITS, SampleRef, category_dir, has_split, list_samples, read_rgb, read_xyz
from patchbank.errors import DataError, InputError
from patchbank.files import TMP_SUFFIX, write_atomic
from patchbank.preprocess import valid_points

RECORD_FILE = ".patchbank-preprocess.json"  # in OUT
RECIPE = 1  # what a parameter set writes; raise it when that changes, so older outputs are refused
FLUSH_SECONDS = 30.0  # the record is rewritten at most this often while a run goes on
TIFF_SUFFIXES = (".tiff", ".tif")


class PublishedBackground(BackgroundOptions):
    """:class:`BackgroundOptions` with BTF's values for MVTec 3D-AD at full resolution (border 10 pixels,
    plane 5 mm, 1000 RANSAC hypotheses, DBSCAN eps 6 mm and 30 points)."""

    cluster_eps: float | None = Field(0.006, gt=0, description="metres, DBSCAN radius (BTF: 0.006)")
    cluster_min_points: int = Field(
        30, ge=1, description="DBSCAN: points within cluster_eps that make a core point (BTF: 30)"
    )


class PrepOptions(BaseModel):
    """What ``patchbank preprocess`` does to each sample; one ``OUT`` holds one set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    background: PublishedBackground = Field(
        default_factory=PublishedBackground, description="the background removal (BTF's values)"
    )
    rgb: Literal["link", "mask"] = Field(
        "link",
        description="link: RGB images as they are (hard links); mask: the pixels of removed points black, "
        "as BTF's script writes them",
    )


class Stamp(BaseModel):
    """A file's identity for the cache: size and modification time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=0, description="bytes")
    mtime_ns: int = Field(description="modification time, nanoseconds since the epoch")

    @classmethod
    def of(cls, path: Path) -> Stamp:
        st = Path(path).stat()
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns)


class SampleRecord(BaseModel):
    """One sample done: its source files and its outputs as they were when it was written."""

    model_config = ConfigDict(extra="forbid")

    sources: dict[str, Stamp] = Field(description="source files, by path relative to SRC")
    outputs: dict[str, Stamp] = Field(description="files written or linked, by path relative to OUT")
    points: int = Field(ge=0, description="valid points of the source cloud")
    kept: int = Field(ge=0, description="valid points kept (the part)")


class PrepRecord(BaseModel):
    """``OUT/.patchbank-preprocess.json``: the parameters and every sample done with them."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    recipe: int = Field(RECIPE, description="version of what the parameters write (RECIPE)")
    options: PrepOptions
    source: str = Field(description="the source dataset root of the last run (absolute)")
    patchbank: str = Field(description="the patchbank version of the last run")
    samples: dict[str, SampleRecord] = Field(
        default_factory=dict,
        description="by the cloud's path relative to SRC, e.g. bagel/test/crack/xyz/000.tiff",
    )


@dataclass
class CategoryPrep:
    """What a run did to one category."""

    category: str
    out: Path
    samples: int = 0  # clouds in the category
    done: int = 0  # cleaned by this run
    skipped: int = 0  # already done with these parameters
    points: int = 0  # valid points of the source clouds (every sample, done or skipped)
    kept: int = 0  # of which kept as the part
    linked: int = 0  # files hard-linked by this run
    copied: int = 0  # files copied by this run (the filesystem refused a link)
    removed: int = 0  # samples SRC no longer has, removed from OUT by this run


def _version() -> str:
    try:
        return metadata.version("patchbank")
    except metadata.PackageNotFoundError:
        return "unknown"


def _flat(data: object, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        return {k: v for key, item in data.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def _differences(old: PrepRecord, options: PrepOptions) -> list[str]:
    """What differs between the record's parameters and ``options``, one ``name: recorded -> asked`` each."""
    found = [f"recipe: {old.recipe} -> {RECIPE}"] if old.recipe != RECIPE else []
    was, now = _flat(old.options.model_dump(mode="json")), _flat(options.model_dump(mode="json"))
    found += [
        f"{k}: {was.get(k)} -> {now.get(k)}" for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)
    ]
    return found


def link_file(src: Path, dst: Path) -> Literal["present", "linked", "copied"]:
    """``dst`` as ``src``: a hard link, or a copy (same modification time) where links are refused;
    nothing when it already is one."""
    if dst.exists() and (os.path.samefile(src, dst) or Stamp.of(dst) == Stamp.of(src)):
        return "present"
    how: list[Literal["linked", "copied"]] = []

    def put(tmp: Path) -> None:
        try:
            os.link(src, tmp)
            how.append("linked")
        except OSError:  # another filesystem, or one without hard links
            shutil.copy2(src, tmp)
            how.append("copied")

    write_atomic(dst, put)
    return how[0]


class _Journal:
    """The record, rewritten atomically when it changed: at most every FLUSH_SECONDS, and on :meth:`flush`."""

    def __init__(self, path: Path, record: PrepRecord, dirty: bool) -> None:
        self.path, self.record, self.dirty, self.last = path, record, dirty, time.monotonic()

    def add(self, key: str, entry: SampleRecord) -> None:
        self.record.samples[key] = entry
        self.dirty = True
        if time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def forget(self, key: str) -> None:
        del self.record.samples[key]
        self.dirty = True

    def flush(self) -> None:
        if self.dirty:
            text = self.record.model_dump_json(indent=1) + "\n"
            write_atomic(self.path, lambda tmp: tmp.write_text(text))
            self.dirty = False
        self.last = time.monotonic()


def read_record(out: Path) -> PrepRecord | None:
    """``OUT``'s record, None when there is none; DataError naming it when it is not one."""
    path = Path(out) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return PrepRecord.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError) as exc:
        raise DataError(f"{path} is not a preprocessing record ({exc}); remove it or use --force") from exc


def _open_journal(src: Path, out: Path, options: PrepOptions, force: bool) -> _Journal:
    """The journal of ``OUT``: its record when the parameters match, a fresh one when there is none or
    ``force``; InputError naming the differences otherwise."""
    old = None if force else read_record(out)
    if old is not None and _differences(old, options):
        raise InputError(
            f"{out} was preprocessed with other parameters ({'; '.join(_differences(old, options))}): give "
            "another OUT, or --force to redo every sample with these"
        )
    samples = old.samples if old is not None else {}
    record = PrepRecord(options=options, source=str(src.resolve()), patchbank=_version(), samples=samples)
    changed = old is None or (old.source, old.patchbank) != (record.source, record.patchbank)
    return _Journal(out / RECORD_FILE, record, changed)


def _check_roots(src: Path, out: Path) -> None:
    if not src.is_dir():
        raise DataError(f"dataset root {src} is not a directory")
    a, b = src.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise InputError(f"the preprocessed dataset {out} needs a folder apart from the source {src}")


def _xyz_name(path: Path) -> str:
    return path.name if path.suffix.lower() in TIFF_SUFFIXES else f"{path.stem}.tiff"


def _done(entry: SampleRecord, sources: dict[str, Stamp], out: Path) -> bool:
    """Whether a recorded sample still stands: same sources, every output there as written."""
    if entry.sources != sources:
        return False
    for rel, stamp in entry.outputs.items():
        path = out / rel
        if not path.is_file() or Stamp.of(path) != stamp:
            return False
    return True


def _masked_rgb(ref: SampleRef, removed: np.ndarray, dst: Path) -> None:
    """The RGB image with the pixels of removed points black, written atomically in its own format."""
    rgb = np.array(read_rgb(ref.rgb))
    if removed.shape != rgb.shape[:2]:  # an RGB at another resolution than its cloud
        scaled = Image.fromarray(removed.astype(np.uint8)).resize(rgb.shape[1::-1], Image.Resampling.NEAREST)
        removed = np.asarray(scaled).astype(bool)
    rgb[removed] = 0
    fmt = Image.registered_extensions().get(dst.suffix.lower(), "PNG")
    write_atomic(dst, lambda tmp: Image.fromarray(rgb).save(tmp, format=fmt))


class _CategoryRun:
    """One category's run: its samples cleaned, its other files linked, counts kept."""

    def __init__(self, src: Path, out: Path, name: str, options: PrepOptions, journal: _Journal) -> None:
        self.src, self.out, self.options, self.journal = src, out, options, journal
        self.result = CategoryPrep(name, out / name)

    def _link(self, src: Path, dst: Path) -> None:
        how = link_file(src, dst)
        self.result.linked += how == "linked"
        self.result.copied += how == "copied"

    def sample(self, ref: SampleRef) -> str:
        """Clean one sample unless it is done; its key in the record."""
        rel = {p: p.relative_to(self.src) for p in (ref.rgb, ref.xyz, ref.gt) if p is not None}
        sources = {rel[p].as_posix(): Stamp.of(p) for p in rel}
        key = rel[ref.xyz].as_posix()
        entry = self.journal.record.samples.get(key)
        if entry is not None and _done(entry, sources, self.out):
            self.result.skipped += 1
            self.result.points += entry.points
            self.result.kept += entry.kept
            return key
        xyz = read_xyz(ref.xyz, ref.intrinsics)
        clean = remove_background(xyz, self.options.background)
        before, after = valid_points(xyz), valid_points(clean)
        if not after.any():
            raise DataError(
                f"{ref.xyz}: the background removal left no point of the part ({int(before.sum())} valid "
                "points, none in a DBSCAN cluster); lower --background.cluster-min-points or raise "
                "--background.cluster-eps for this resolution"
            )
        xyz_out = self.out / rel[ref.xyz].with_name(_xyz_name(ref.xyz))
        write_atomic(xyz_out, lambda tmp: tifffile.imwrite(tmp, clean, photometric="rgb"))
        rgb_out = self.out / rel[ref.rgb]
        if self.options.rgb == "mask":
            _masked_rgb(ref, before & ~after, rgb_out)
        else:
            self._link(ref.rgb, rgb_out)
        outputs = [xyz_out, rgb_out]
        if ref.gt is not None:
            self._link(ref.gt, self.out / rel[ref.gt])
            outputs.append(self.out / rel[ref.gt])
        points, kept = int(before.sum()), int(after.sum())
        record = SampleRecord(
            sources=sources,
            outputs={p.relative_to(self.out).as_posix(): Stamp.of(p) for p in outputs},
            points=points,
            kept=kept,
        )
        self.journal.add(key, record)
        self.result.done += 1
        self.result.points += points
        self.result.kept += kept
        return key

    def prune(self, keys: set[str]) -> None:
        """Remove from OUT (and the record) the samples of this category that SRC no longer has."""
        prefix = f"{self.result.category}/"
        for key in [k for k in self.journal.record.samples if k.startswith(prefix) and k not in keys]:
            for rel in self.journal.record.samples[key].outputs:
                (self.out / rel).unlink(missing_ok=True)
            self.journal.forget(key)
            self.result.removed += 1

    def others(self, sample_files: set[Path]) -> None:
        """Link every file of the category that is no sample's (calibration, class ids, readme...)."""
        for path in sorted((self.src / self.result.category).rglob("*")):
            rel = path.relative_to(self.src)
            if path.is_file() and path not in sample_files and not any(p.startswith(".") for p in rel.parts):
                self._link(path, self.out / rel)


def _sweep(folder: Path) -> None:
    """Remove the temporary files a killed run left under ``folder``."""
    if folder.is_dir():
        for path in folder.rglob(f"*{TMP_SUFFIX}"):
            path.unlink(missing_ok=True)


def _preprocess_category(
    src: Path, out: Path, category: str, options: PrepOptions, journal: _Journal, progress: bool = True
) -> CategoryPrep:
    """One category of ``src`` into ``out`` (see the module's docstring), its samples in the journal."""
    category_dir(src, category)
    refs = [r for s in SPLITS if has_split(src, category, s) for r in list_samples(src, category, s)]
    if not refs:
        raise DataError(f"{src / category} has no sample in any of the splits {', '.join(SPLITS)}")
    _sweep(out / category)
    run = _CategoryRun(src, out, category, options, journal)
    run.result.samples = len(refs)
    keys = {
        run.sample(ref)
        for ref in tqdm(refs, desc=f"preprocess {category}", unit="sample", disable=not progress)
    }
    run.prune(keys)
    run.others({p for r in refs for p in (r.rgb, r.xyz, r.gt) if p is not None})
    return run.result


def preprocess_dataset(
    src: Path,
    out: Path,
    categories: Sequence[str] | None = None,
    options: PrepOptions | None = None,
    force: bool = False,
    progress: bool = True,
) -> list[CategoryPrep]:
    """Write ``src`` (MVTec 3D-AD layout) to ``out`` with every cloud's background removed, once: samples
    already done with the same parameters are skipped (see the module's docstring). ``categories``: the
    ones to do (default: every folder of ``src`` with a split). Raises InputError for parameters other
    than ``out``'s record (unless ``force``) or ``out`` overlapping ``src``; DataError for a missing or
    malformed dataset."""
    src, out, options = Path(src), Path(out), options or PrepOptions()
    _check_roots(src, out)
    names = list(dict.fromkeys(categories)) if categories else categories_of(src)
    if not names:
        raise DataError(
            f"{src} holds no category in the MVTec 3D-AD layout (<category>/{{train,validation,test}}/<kind>/"
            "{rgb,xyz}/)"
        )
    for name in names:
        category_dir(src, name)
    out.mkdir(parents=True, exist_ok=True)
    journal = _open_journal(src, out, options, force)
    done = []
    try:
        for path in sorted(src.iterdir()):  # the release's readme and license beside the categories
            if path.is_file() and not path.name.startswith("."):
                link_file(path, out / path.name)
        for name in names:
            done.append(_preprocess_category(src, out, name, options, journal, progress))
    finally:
        journal.flush()
    return done
