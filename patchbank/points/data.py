"""Reading datasets in the Real3D-AD layout (M-3LAB/Real3D-AD, NeurIPS 2023), as its own reader
(``dataset_pc.py``) reads them.

```
ROOT/<category>/
  train/<n>_template.pcd       the 360-degree stitched prototypes (4 per category), good
  test/<n>_good.pcd            good test clouds: every point good, no label file
  test/<n>_bulge.pcd           defective test clouds: bulge or sink, also <n>_bulge_cut, <n>_sink_copy...
  gt/<n>_bulge.txt             one line "x y z label" per point of that cloud (label 0 good, 1 anomalous)
```

Coordinates are millimetres (the objects are 20-40 mm long); a category of any unit works, the features
being scale-adaptive. The official reader's rules, followed here:

- training clouds are the ``train/*.pcd`` whose name holds ``template`` (the README's drawing calls them
  ``<n>_prototype.pcd``: without any ``template`` file, every ``.pcd`` / ``.ply`` in ``train/`` is one);
- test clouds are every ``test/*.pcd`` whose name does not hold ``temp``; a cloud is good when its name holds
  ``good``, defective otherwise, and then its points and labels both come from ``gt/<stem>.txt`` (the
  reference evaluation scores the points of the label file, not those of the ``.pcd``);
- the defect kind of a defective cloud is ``bulge`` or ``sink`` when its name says which (``_cut`` and
  ``_copy`` variants count as their kind), else the name without its leading number.

The official reader centres every cloud on its mean; the point features are translation invariant, so the
clouds are read as they are.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchbank.errors import DataError, InputError
from patchbank.points.io import read_labels, read_points

TRAIN, TEST, GT = "train", "test", "gt"
SPLITS = (TRAIN, TEST)
GOOD = "good"
DEFECT_KINDS = ("bulge", "sink")  # Real3D-AD's two kinds of defect
CLOUD_SUFFIXES = (".pcd", ".ply")
LABEL_SUFFIX = ".txt"
TEMPLATE, TEMPORARY = "template", "temp"  # the official reader's name tests (train keeps, test skips)
READ_ANY_SIZE = 2**62  # a dataset's files are trusted for size (the service's limit is for uploads)
_LEADING_NUMBER = re.compile(r"^\d+[_-]?")


@dataclass(frozen=True)
class PointSampleRef:
    """One cloud of a Real3D-AD dataset: ``path`` the ``.pcd`` (or ``.ply``), ``label_file`` its ``gt/*.txt``
    (None for good clouds), ``kind`` ``good`` or the defect kind."""

    category: str
    split: str
    kind: str
    path: Path
    label_file: Path | None = None

    @property
    def name(self) -> str:
        """A stable id: ``split/stem`` (e.g. ``test/12_bulge``)."""
        return f"{self.split}/{self.path.stem}"

    @property
    def label(self) -> int:
        """0 for good, 1 for any defect kind."""
        return 0 if self.kind == GOOD else 1


def _clouds(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in CLOUD_SUFFIXES), key=_natural)


def _natural(path: Path) -> tuple[int, str]:
    """Files in the order of their leading number (``2_good`` before ``10_good``), then by name."""
    m = re.match(r"\d+", path.stem)
    return (int(m.group()) if m else -1, path.name)


def is_point_dataset(root: Path, category: str) -> bool:
    """Whether ``ROOT/<category>`` is in the Real3D-AD layout: clouds directly in its ``train/`` folder (an
    MVTec 3D-AD category has ``train/good/xyz/`` instead). False for a category that does not exist."""
    return bool(_clouds(Path(root) / category / TRAIN))


def list_point_categories(root: Path) -> list[str]:
    """The categories under ``root`` in the Real3D-AD layout, sorted."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and is_point_dataset(base, p.name))


def defect_kind(stem: str) -> str:
    """``good``, ``bulge`` or ``sink`` from a test cloud's name (``396_bulge_cut`` -> ``bulge``), else the name
    without its leading number (``7_crack`` -> ``crack``)."""
    low = stem.lower()
    if GOOD in low:
        return GOOD
    for kind in DEFECT_KINDS:
        if kind in low:
            return kind
    return _LEADING_NUMBER.sub("", low) or "defect"


def _training(category: str, folder: Path) -> list[PointSampleRef]:
    clouds = [p for p in _clouds(folder) if p.suffix.lower() == ".pcd" and TEMPLATE in p.name.lower()]
    return [PointSampleRef(category, TRAIN, GOOD, p) for p in clouds or _clouds(folder)]


def _test(category: str, folder: Path, gt: Path) -> list[PointSampleRef]:
    refs = []
    for p in _clouds(folder):
        if p.suffix.lower() != ".pcd" or TEMPORARY in p.name.lower():
            continue
        kind = defect_kind(p.stem)
        labels = None
        if kind != GOOD:
            labels = gt / f"{p.stem}{LABEL_SUFFIX}"
            if not labels.is_file():
                raise DataError(f"{folder}: defective cloud {p.name} has no labels {labels}")
        refs.append(PointSampleRef(category, TEST, kind, p, labels))
    refs.sort(key=lambda r: (r.kind != GOOD, r.kind))  # stable: each kind keeps its natural order
    return refs


def list_point_samples(root: Path, category: str, split: str) -> list[PointSampleRef]:
    """The clouds of one split (``train`` or ``test``): prototypes, or the test clouds good first then each
    defect kind, each in the natural order of their names. DataError naming the path for a missing category
    or split, an empty one, or a defective cloud without its label file."""
    if split not in SPLITS:
        raise DataError(
            f"unknown split {split!r} of a Real3D-AD dataset; expected one of {', '.join(SPLITS)}"
        )
    base = Path(root) / category
    if not base.is_dir():
        found = list_point_categories(root)
        hint = f" (point categories found: {', '.join(found)})" if found else ""
        raise DataError(f"category {category!r} not found: {base} is not a directory{hint}")
    folder = base / split
    if not folder.is_dir():
        raise DataError(f"split {split!r} not found: {folder} is not a directory")
    refs = _training(category, folder) if split == TRAIN else _test(category, folder, base / GT)
    if not refs:
        raise DataError(f"split {split!r} of category {category!r} holds no point clouds ({folder})")
    return refs


def has_point_split(root: Path, category: str, split: str) -> bool:
    """Whether the category has the split with at least one cloud in it."""
    return bool(_clouds(Path(root) / category / split))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc


def read_cloud(path: Path) -> np.ndarray:
    """A dataset cloud's (N, 3) float32 points (:func:`patchbank.points.io.read_points`); DataError naming the
    file."""
    try:
        return read_points(_read(path), path.name, str(path), READ_ANY_SIZE)
    except InputError as exc:
        raise DataError(str(exc)) from exc


def read_point_sample(ref: PointSampleRef) -> tuple[np.ndarray, np.ndarray]:
    """A cloud as the reference evaluation reads it: (N, 3) float32 points and (N,) bool labels (True =
    anomalous). Good clouds: the ``.pcd``'s points, all good; defective clouds: the label file's points and
    labels. DataError naming the file."""
    if ref.label_file is None:
        points = read_cloud(ref.path)
        return points, np.zeros(len(points), dtype=bool)
    try:
        return read_labels(_read(ref.label_file), str(ref.label_file), READ_ANY_SIZE)
    except InputError as exc:
        raise DataError(str(exc)) from exc


def point_digest(refs: Iterable[PointSampleRef]) -> str:
    """sha256 over the clouds' names and file bytes: identifies a training set."""
    h = hashlib.sha256()
    for ref in refs:
        h.update(ref.name.encode())
        for path in (ref.path, ref.label_file):
            if path is not None:
                h.update(_read(path))
    return h.hexdigest()
