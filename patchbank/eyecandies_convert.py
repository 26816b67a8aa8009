"""Converting an Eyecandies root (:mod:`patchbank.eyecandies`) to the MVTec 3D-AD layout the banks read.

``OUT/<Category>/{train,validation,test}/<good|bad>/{rgb,xyz,gt}/NNN.{png,tiff}``, as M3DM
(nomewang/M3DM ``utils/preprocess_eyecandies.py``) and CFM (CVLAB-Unibo/crossmodal-feature-mapping
``processing/preprocess_eyecandies.py``) lay it out: ``train`` -> ``train/good``, ``val`` ->
``validation/good`` (which they leave out; the banks set their thresholds on it), ``test_public`` ->
``test/good`` and ``test/bad`` by the sample's label (:func:`patchbank.eyecandies.is_anomalous`), with
``gt`` masks (0/255) for both. ``test_private`` has no labels and is not converted. ``NNN`` is the source
index, zero-padded to three digits (M3DM's ``str(i).zfill(3)``), so test/good and test/bad share the
numbering with gaps.

rgb is the chosen lighting's image; xyz the organized cloud (float32 TIFF, metres, (0, 0, 0) = missing) in the
camera or the world frame; with ``size`` every image is resized to size x size (RGB bicubic, xyz by the
nearest rule the banks use, masks nearest). Resumable: a sample whose files are all there is skipped, and
every file is written whole then renamed, so a file that exists is complete. The options are recorded in
``OUT/<Category>/eyecandies.json`` (:class:`ConversionRecord`); resuming with other options is refused.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm.auto import tqdm

from patchbank.cloud_formats import MIN_SIDE
from patchbank.cloud_write import encode_cloud
from patchbank.errors import DataError, InputError
from patchbank.eyecandies import (
    DEFAULT_LIGHTING,
    LIGHTINGS,
    EyecandiesRef,
    EyecandiesSample,
    Frame,
    is_anomalous,
    list_categories,
    list_samples,
    list_splits,
    read_sample,
)
from patchbank.files import write_atomic

TARGET_SPLITS: Final[dict[str, str]] = {"train": "train", "val": "validation", "test_public": "test"}
GOOD: Final = "good"
BAD: Final = "bad"  # M3DM's and CFM's name for test_public's anomalous samples
RECORD_FILE: Final = "eyecandies.json"
RECORD_VERSION: Final = 1


class ConversionOptions(BaseModel):
    """What a conversion makes of each sample."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lighting: int = Field(
        DEFAULT_LIGHTING,
        ge=0,
        le=len(LIGHTINGS) - 1,
        description="image_N written as rgb: " + ", ".join(f"{i} {n}" for i, n in enumerate(LIGHTINGS)),
    )
    size: int | None = Field(
        None, ge=MIN_SIDE, description="pixels of the written square images (default: the source's, 512)"
    )
    frame: Frame = Field("camera", description="xyz in the camera frame, or the world frame (the pose)")


class ConversionRecord(BaseModel):
    """``OUT/<Category>/eyecandies.json``: how the category was converted, checked when resuming."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = RECORD_VERSION
    source: str = Field(description="the Eyecandies category folder converted")
    options: ConversionOptions


@dataclass(frozen=True)
class ConvertedCategory:
    """One category converted: where, how many samples were written or already there, and per folder
    (``train/good``...) how many it holds."""

    category: str
    out: Path
    written: int
    skipped: int
    counts: dict[str, int]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _nearest(arr: np.ndarray, size: int) -> np.ndarray:
    """(size, size, ...) by the nearest rule the banks resize clouds with (src = floor(dst * in / out))."""
    h, w = arr.shape[:2]
    rows = np.arange(size) * h // size
    cols = np.arange(size) * w // size
    return arr[rows[:, None], cols[None, :]]


def resize(sample: EyecandiesSample, size: int | None) -> EyecandiesSample:
    """The sample at size x size pixels (unchanged when it already is, or without ``size``)."""
    if size is None or sample.rgb.shape[:2] == (size, size):
        return sample
    rgb = np.asarray(Image.fromarray(sample.rgb).resize((size, size), Image.Resampling.BICUBIC))
    gt = None
    if sample.gt is not None:
        gt = np.asarray(Image.fromarray(sample.gt).resize((size, size), Image.Resampling.NEAREST))
    return EyecandiesSample(rgb, np.ascontiguousarray(_nearest(sample.xyz, size)), gt)


def _record(src: Path, out: Path, options: ConversionOptions) -> None:
    """Write the category's record, or check it against a previous run's (DataError when they differ)."""
    path = out / RECORD_FILE
    record = ConversionRecord(source=str(src.resolve()), options=options)
    if path.is_file():
        try:
            old = ConversionRecord.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise DataError(f"{path} is not a conversion record: {exc.errors()[0]['msg']}") from exc
        if old.options != options:
            raise DataError(
                f"{out} was converted with {old.options.model_dump()}, not {options.model_dump()}: "
                "convert into another folder, or remove it first"
            )
        return
    write_atomic(path, record.model_dump_json(indent=2).encode())


def _targets(out: Path, split: str, ref: EyecandiesRef) -> tuple[str, dict[str, Path]]:
    """The sample's folder (``test/bad``) and its files' paths by kind (rgb, xyz, gt for test)."""
    target = TARGET_SPLITS[split]
    kind = BAD if target == "test" and is_anomalous(ref) else GOOD
    folder = out / target / kind
    stem = f"{ref.index:03d}"
    paths = {"rgb": folder / "rgb" / f"{stem}.png", "xyz": folder / "xyz" / f"{stem}.tiff"}
    if target == "test":
        paths["gt"] = folder / "gt" / f"{stem}.png"
    return f"{target}/{kind}", paths


def _write(sample: EyecandiesSample, paths: dict[str, Path]) -> None:
    h, w = sample.xyz.shape[:2]
    gt = sample.gt if sample.gt is not None else np.zeros((h, w), np.uint8)
    write_atomic(paths["xyz"], encode_cloud(sample.xyz, "tiff"))
    if "gt" in paths:
        write_atomic(paths["gt"], _png(gt))
    write_atomic(paths["rgb"], _png(sample.rgb))


def convert_category(
    src: Path, out: Path, category: str, options: ConversionOptions, progress: bool = True
) -> ConvertedCategory:
    """Convert one category of the Eyecandies root ``src`` into ``out/<category>`` (see the module)."""
    splits = [s for s in list_splits(src, category) if s in TARGET_SPLITS]
    if "train" not in splits:
        raise DataError(f"{Path(src) / category} has no train/data: a bank needs training samples")
    dest = Path(out) / category
    _record(Path(src) / category, dest, options)
    refs = [(split, ref) for split in splits for ref in list_samples(src, category, split)]
    counts: Counter[str] = Counter()
    written = 0
    for split, ref in tqdm(refs, desc=f"{category} -> MVTec 3D-AD", unit="sample", disable=not progress):
        folder, paths = _targets(dest, split, ref)
        counts[folder] += 1
        if all(p.is_file() for p in paths.values()):
            continue
        _write(resize(read_sample(ref, options.lighting, options.frame), options.size), paths)
        written += 1
    return ConvertedCategory(category, dest, written, len(refs) - written, dict(sorted(counts.items())))


def convert_eyecandies(
    src: Path,
    out: Path,
    categories: Sequence[str] | None = None,
    options: ConversionOptions | None = None,
    progress: bool = True,
) -> list[ConvertedCategory]:
    """:func:`convert_category` for each category of ``src`` (every one by default) into ``out``."""
    if Path(out).resolve() == Path(src).resolve():
        raise InputError(f"the converted dataset needs a folder of its own, not the source {src}")
    names = list(dict.fromkeys(categories)) if categories else list_categories(src)
    opts = options or ConversionOptions()
    return [convert_category(Path(src), Path(out), name, opts, progress) for name in names]
