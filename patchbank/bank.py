"""The bank format: versioned directories of FAISS index + JSON manifest, written atomically.

```
BANKS/<category>/
  ACTIVE                 the active version's name (one line), replaced atomically
  v0001/                 immutable once written
    manifest.json        Manifest (below), generated from the pydantic model
    manifest.sha256      sha256 of manifest.json (the manifest holds the checksums of the other files)
    index.faiss          faiss.write_index of an IndexIDMap2 (ids = training sample * 784 + patch);
                         a late-fusion bank has one per member: index0.faiss, index1.faiss, ...
```
A version is written to a temporary directory and renamed into place; calibrating or refreshing a bank makes
a new version (``write_version`` with the same index files and a new manifest). No pickle anywhere.
Format 1 manifests (one bank, before late fusion) are read as a single-member manifest of today's format; format 2
named a feature spec's extractor "method", which is still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchbank.clouds import Intrinsics
from patchbank.coreset import CoresetSpec
from patchbank.errors import BankError
from patchbank.features.base import FeatureSpec
from patchbank.fusion import Fusion
from patchbank.index import PatchIndex
from patchbank.rules import Scoring
from patchbank.units import CloudScale
from patchbank.weights import WeightsIdentity, sha256_file

FORMAT_VERSION = 3  # 3: a feature spec names its "extractor" (2 said "method"; read as before)
READABLE_FORMATS = (1, 2, 3)
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"
INDEX_FILE = "index.faiss"
ACTIVE = "ACTIVE"
VERSION_RE = re.compile(r"^v([0-9]{4,})\Z")  # \Z: "v0001\n" is no version name
CATEGORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
T = TypeVar("T", float, "np.ndarray")
LIBRARIES = ("patchbank", "torch", "timm", "faiss-cpu", "faiss-gpu", "open3d", "numpy", "scikit-learn")


class CoresetInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: CoresetSpec
    n_patches: int = Field(description="training patches before subsampling (samples x 784)")
    size: int = Field(description="vectors kept in the bank")
    projected_dim: int | None = Field(None, description="dimension the greedy selection ran in")


class TrainingInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_samples: int
    samples: list[str] = Field(
        description="sample names in id order: vector id // 784 indexes this list (a 3D-only bank: id // the "
        "most centres per cloud, its extractor's n_centres)"
    )
    digest: str = Field(description="sha256 over the training samples' names and file bytes")


class ScoreStats(BaseModel):
    """Image scores of good parts the bank did not see, and the decision thresholds derived from them."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="validation (validation/good) or train-leave-one-out")
    n: int
    image_scores: list[float] = Field(description="reweighted image score of each held-out good sample")
    map_maxima: list[float] = Field(description="largest value of each held-out good sample's anomaly map")
    mean: float
    std: float
    quantiles: dict[str, float] = Field(description="p50, p90, p95, p99 and max of the image scores")


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: float = Field(description="image score above which a part is anomalous (NG)")
    pixel: float = Field(description="anomaly-map value above which a pixel belongs to a defect region")
    rule: str = Field(description="how the thresholds were set")

    def decide(self, image_score: float) -> bool:
        """Whether a part with this image score is anomalous (NG)."""
        return is_anomalous(image_score, self.image)


def is_anomalous(image_score: T, threshold: float) -> T:
    """The one decision rule: NG when the image score is strictly above the image threshold (a float, or an
    array of scores -> a bool array)."""
    return image_score > threshold  # type: ignore[return-value,operator]


class FalseRejects(BaseModel):
    """A false-reject rate measured on good parts that did not set the threshold, with its interval."""

    model_config = ConfigDict(extra="forbid")

    rate: float
    low: float = Field(description="lower end of the 95% Clopper-Pearson interval")
    high: float = Field(description="upper end of the 95% Clopper-Pearson interval")
    rejects: int
    n: int
    method: str = Field(description="how the goods were kept apart from the threshold, e.g. 10-fold CV")


class Calibration(BaseModel):
    """How ``calibrate`` set the thresholds, and what it measured."""

    model_config = ConfigDict(extra="forbid")

    rule: str = Field(description="target-frr, or f1 (labelled anomalies)")
    target_frr: float | None = Field(None, description="the false-reject rate aimed at (rule target-frr)")
    image_rule: str = Field(description="how the image threshold was derived")
    pixel_rule: str = Field(description="how the pixel threshold was derived")
    false_rejects: FalseRejects = Field(description="good parts called NG at the image threshold")
    labelled: dict[str, float] | None = Field(
        None, description="rule f1: the labelled split's size, anomalies, F1, image and pixel F1"
    )
    created_at: str


class MemberStats(BaseModel):
    """One member bank's raw scores of the held-out good parts (what its fusion alignment is fitted on)."""

    model_config = ConfigDict(extra="forbid")

    image_scores: list[float]
    pixel_mean: float | None = Field(None, description="mean of every held-out map pixel")
    pixel_std: float | None = Field(None, description="std of every held-out map pixel")


class Figures(BaseModel):
    image_auroc: float = Field(description="I-AUROC on image scores (a 3D-only bank: object AUROC)")
    pixel_auroc: float = Field(
        description="P-AUROC on all pixels at 224 x 224 (a 3D-only bank: point AUROC on every point)"
    )
    au_pro: float = Field(
        description="AU-PRO integrated to FPR 0.3, normalised (a 3D-only bank: over point regions)"
    )
    n: int = Field(description="samples (good + defective)")


class SampleScore(BaseModel):
    name: str
    kind: str = Field(description="good, or the defect kind")
    image_score: float
    is_anomalous: bool


class EvaluationRecord(BaseModel):
    """What ``evaluate`` measured on a labelled test split, as a manifest stores it."""

    method: str
    image_auroc: float = Field(description="I-AUROC on image scores; a 3D-only bank: object AUROC")
    pixel_auroc: float = Field(
        description="P-AUROC on all pixels; a 3D-only bank: point AUROC over every point of every test cloud"
    )
    au_pro: float = Field(
        description="AU-PRO to FPR 0.3; a 3D-only bank: point AU-PRO, regions the connected defective points"
    )
    n_test: int
    per_defect: dict[str, Figures]
    score_ms: float | None = Field(
        None, description="mean wall-clock milliseconds per test sample, scored in batches of 8"
    )
    threshold: float
    false_reject_rate: float = Field(description="good test samples scored above the threshold")
    false_reject_ci: tuple[float, float] = Field(
        (0.0, 1.0), description="its 95% Clopper-Pearson interval (the test goods did not set the threshold)"
    )
    miss_rate: float = Field(description="defective test samples scored at or below the threshold")
    calibration: str | None = Field(
        None, description="how the threshold was calibrated, and its measured FRR"
    )
    scores: list[SampleScore] = Field(default_factory=list, description="every test sample's score")

    def worse_than(self, old: EvaluationRecord, tolerance: float) -> list[str]:
        """The figures (I-AUROC, AU-PRO, P-AUROC) on which this is worse than ``old`` beyond ``tolerance``."""
        keys = ("image_auroc", "au_pro", "pixel_auroc")
        return [
            f"{k} {getattr(self, k):.3f} < {getattr(old, k):.3f}"
            for k in keys
            if getattr(self, k) < getattr(old, k) - tolerance
        ]


class Member(BaseModel):
    """One bank of patch features: its extractor, weights, index file and coreset."""

    model_config = ConfigDict(extra="forbid")

    features: FeatureSpec
    weights: WeightsIdentity
    index_kind: str = Field("flat", description="search index: flat (exact) or hnsw (approximate)")
    index_file: str = Field(INDEX_FILE, description="the FAISS index file in the version dir")
    coreset: CoresetInfo
    held_out: MemberStats | None = None

    @property
    def name(self) -> str:
        """The member's extractor name."""
        return self.features.extractor


class RefreshRecord(BaseModel):
    """How ``refresh-bank`` made this version from its parent: which confirmed-good parts, which parameters."""

    model_config = ConfigDict(extra="forbid")

    candidates: list[str] = Field(
        description="review decisions used by this version and its refreshed parents"
    )
    added: list[str] = Field(description="the decisions whose patches joined the coreset choice")
    held_out: list[str] = Field(description="the decisions that set the thresholds (never in the bank)")
    held_back: list[str] = Field(
        description="decisions not used: unreadable, or far and not confirmed enough"
    )
    half_life_days: float = Field(description="the forgetting curve's half-life for a vector never recalled")
    size: list[int] = Field(description="vectors per member")
    bound: list[int] = Field(description="the most vectors per member this bank's refreshes keep")
    confirmations: int = Field(description="reviewers a candidate scoring above the threshold needed")
    recalled: list[int] = Field(description="per member, the parent's vectors recalled at least once")
    auto_accepted: list[str] = Field(
        default_factory=list, description="candidates the service kept without review (auto-accept)"
    )
    auto_accept_below: list[float] = Field(
        default_factory=list, description="the auto-accept quantiles those were kept at"
    )
    at: str = Field(description="UTC, ISO 8601")


class Manifest(BaseModel):
    """Everything needed to rebuild a bank's scorer exactly, and to check that it is intact."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    category: str
    version: str = Field(description="vNNNN, assigned when the version is written")
    created_at: str = Field(description="UTC, ISO 8601")
    method: str = Field(description="scoring method (patchbank.methods): e.g. rgb+fpfh, or rgb/fpfh")
    members: list[Member] = Field(min_length=1, description="one bank per member extractor")
    fusion: Fusion | None = Field(None, description="how the members' scores combine (2+ members)")
    scoring: Scoring = Field(
        default_factory=Scoring,
        description="how patch distances become the map and the image score (absent: BTF's published rule)",
    )
    training: TrainingInfo
    score_stats: ScoreStats = Field(description="held-out goods' final (fused) scores")
    thresholds: Thresholds
    calibration: Calibration | None = Field(None, description="set by calibrate / build-bank --calibrate")
    evaluation: EvaluationRecord | None = Field(
        None, description="evaluate's figures on the test split, if any"
    )
    libraries: dict[str, str] = Field(description="versions of the libraries the bank was built with")
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of each file in the version dir")
    parent: str | None = Field(
        None, description="the version this one was derived from (recalibration, refresh-bank)"
    )
    refresh: RefreshRecord | None = Field(None, description="set by refresh-bank")
    cloud_scale: CloudScale | None = Field(
        None, description="scale of the training clouds; samples sent without a unit are checked against it"
    )
    intrinsics: Intrinsics | None = Field(
        None, description="the category's depth camera: a depth image sent without intrinsics uses these"
    )
    input: Literal["image", "points"] = Field(
        "image",
        description="what the bank scores: image, an RGB image + organized cloud (per-pixel map, image score); "
        "points, a 3D-only bank of one unorganized cloud (per-point scores, object score: patchbank.points)",
    )


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def now_utc() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def check_category(name: str) -> str:
    if not CATEGORY_RE.match(name):
        raise BankError(f"invalid category name {name!r}: use letters, digits, '_', '-', '.' (max 64)")
    return name


def versions(banks: Path, category: str) -> list[str]:
    """Written versions of a category, oldest first (a version directory linked from outside
    ``BANKS/<category>/`` is none of them)."""
    cat = Path(banks) / check_category(category)
    if not cat.is_dir():
        return []
    home = cat.resolve()
    found = (
        p.name
        for p in cat.iterdir()
        if VERSION_RE.match(p.name) and p.is_dir() and p.resolve().parent == home
    )
    return sorted(found, key=_vnum)


def _vnum(version: str) -> int:
    m = VERSION_RE.match(version)
    return int(m.group(1)) if m else -1


def _shown(category: str, version: str) -> str:
    """How a refusal names a version: relative to the banks directory (``'puck/../elsewhere'``), never the
    server's own banks path; shortened and quoted, so whatever a registry holds prints on one line."""
    name = version if os.path.isabs(version) else f"{category}/{version}"
    return repr(name if len(name) <= 80 else name[:77] + "...")


def version_dir(banks: Path, category: str, version: str, origin: str = "requested") -> Path:
    """The directory of one of a category's versions. BankError unless ``version`` is a version name (vNNNN)
    whose directory exists and, links resolved, lies directly in ``BANKS/<category>/``: a version named by
    ACTIVE or by Redis is never a path. ``origin`` (e.g. "named in Redis") tells the refusal where the name
    came from."""
    cat = Path(banks) / check_category(category)
    refused = f"bank version {_shown(category, version)} ({origin}) refused"
    if not VERSION_RE.match(version):
        raise BankError(f"{refused}: it is not a version name (vNNNN, e.g. v0001)")
    vdir = cat / version
    if not vdir.is_dir():
        raise BankError(f"bank version {category}/{version} not found")
    if vdir.resolve().parent != cat.resolve():
        raise BankError(f"{refused}: its directory resolves outside {category}/")
    return vdir


def active_version(banks: Path, category: str) -> str | None:
    """The version the category's ACTIVE file names, None without one. BankError when it names anything but one
    of the category's versions (a path, a directory linked from elsewhere)."""
    path = Path(banks) / check_category(category) / ACTIVE
    if not path.is_file():
        return None
    with path.open("rb") as f:
        version = f.read(256).decode("utf-8", "replace").strip()
    if not version:
        return None
    version_dir(banks, category, version, f"named in {category}/{ACTIVE}")
    return version


def _create(parent: Path, prefix: str, directory: bool) -> Path:
    """A new, uniquely named file or directory in ``parent`` with the permissions the process umask gives
    (0666 / 0777 less the umask; tempfile's are 0600 / 0700 whatever the umask, which would keep the account
    a service runs as from reading a bank another account built)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            if directory:
                path.mkdir(0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise BankError(f"could not create a temporary {prefix}* entry next to the bank versions")


def set_active(banks: Path, category: str, version: str) -> None:
    """Point ACTIVE at an existing version of the category (atomic replace)."""
    cat = Path(banks) / check_category(category)
    version_dir(banks, category, version, "to activate")
    tmp = _create(cat, ".ACTIVE.", directory=False)
    try:
        tmp.write_text(version + "\n")
        os.replace(tmp, cat / ACTIVE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def list_categories(banks: Path) -> list[str]:
    """Categories under ``banks`` that have at least one version."""
    root = Path(banks)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and CATEGORY_RE.match(p.name) and versions(root, p.name)
    )


def write_version(
    banks: Path,
    manifest: Manifest,
    write_files: Callable[[Path], None],
    activate: bool = True,
) -> Manifest:
    """Write a new version of ``manifest.category`` atomically and return its final manifest.

    ``write_files(dir)`` writes the data files (index...) into the temporary directory; their checksums,
    the version name and the creation time are filled in here. Two writers never share a version number:
    the rename onto an existing name fails and the next number is tried.
    """
    cat = Path(banks) / check_category(manifest.category)
    cat.mkdir(parents=True, exist_ok=True)
    tmp = _create(cat, ".tmp-", directory=True)
    try:
        write_files(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        for attempt in range(100):
            existing = versions(banks, manifest.category)
            number = (_vnum(existing[-1]) if existing else 0) + 1 + attempt
            final = manifest.model_copy(update={"version": f"v{number:04d}", "files": files})
            text = final.model_dump_json(indent=2) + "\n"
            (tmp / MANIFEST).write_text(text)
            (tmp / MANIFEST_SUM).write_text(hashlib.sha256(text.encode()).hexdigest() + "\n")
            try:
                os.rename(tmp, cat / final.version)
            except OSError:
                continue
            if activate:
                set_active(banks, manifest.category, final.version)
            return final
        raise BankError(f"could not allocate a new version under {cat}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_files_from(source_dir: Path) -> Callable[[Path], None]:
    """A ``write_files`` that copies a version's data files unchanged (for recalibrated versions)."""

    def write(dst: Path) -> None:
        for p in source_dir.iterdir():
            if p.is_file() and p.name not in (MANIFEST, MANIFEST_SUM):
                shutil.copy2(p, dst / p.name)

    return write


def upgrade_format_1(data: dict[str, object]) -> dict[str, object]:
    """A format 1 manifest (one bank) as format 2: its features, weights, index and coreset become the
    single member."""
    out = {k: v for k, v in data.items() if k not in ("features", "weights", "index_kind", "coreset")}
    member = {k: data[k] for k in ("features", "weights", "coreset")}
    member["index_kind"] = data.get("index_kind", "flat")
    out.update(format_version=FORMAT_VERSION, members=[member])
    return out


@dataclass
class Bank:
    """A loaded, verified bank version: its manifest and one index per member."""

    manifest: Manifest
    indices: list[PatchIndex]
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.manifest.category}/{self.manifest.version}"


def read_manifest(version_dir: Path) -> Manifest:
    """Parse and verify a version's manifest (its own checksum first)."""
    where = f"{version_dir.parent.name}/{version_dir.name}"  # banks-relative: messages reach API clients
    mpath, spath = version_dir / MANIFEST, version_dir / MANIFEST_SUM
    if not mpath.is_file() or not spath.is_file():
        raise BankError(f"{where} is not a bank version (no {MANIFEST} / {MANIFEST_SUM})")
    home = version_dir.resolve()
    if mpath.resolve().parent != home or spath.resolve().parent != home:
        raise BankError(f"{where}: {MANIFEST} or {MANIFEST_SUM} resolves outside the version")
    raw = mpath.read_bytes()
    if hashlib.sha256(raw).hexdigest() != spath.read_text().strip():
        raise BankError(f"{where}/{MANIFEST} is corrupt: its sha256 does not match {MANIFEST_SUM}")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BankError(f"{where}/{MANIFEST} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format_version") not in READABLE_FORMATS:
        found = data.get("format_version") if isinstance(data, dict) else None
        raise BankError(
            f"{where}/{MANIFEST} has bank format {found!r}; this patchbank reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}"
        )
    if data["format_version"] == 1:
        data = upgrade_format_1(data)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise BankError(
            f"{where}/{MANIFEST} does not match the manifest schema: {exc.errors()[0]['msg']}"
        ) from exc


def _plain_file_name(name: str) -> bool:
    """A file directly in the version directory: no path, no '.' or '..'."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def verify_version(
    banks: Path, category: str, version: str, origin: str = "requested"
) -> tuple[Path, Manifest]:
    """Everything ``load_bank`` checks before it reads an index: the version lies in ``BANKS/<category>/``
    (:func:`version_dir`), its manifest is intact and names this version, and every file the loader opens is
    a plain file name listed in the manifest's ``files`` whose sha256 matches. Returns the directory and the
    manifest."""
    vdir = version_dir(banks, category, version, origin)
    ref = f"{category}/{version}"
    manifest = read_manifest(vdir)
    if manifest.category != category or manifest.version != version:
        raise BankError(f"{ref} holds {manifest.category}/{manifest.version}, not {ref}")
    for member in manifest.members:
        if not _plain_file_name(member.index_file):
            raise BankError(f"bank {ref} refused: index file {member.index_file!r} is not a plain file name")
        if member.index_file not in manifest.files:
            raise BankError(
                f"bank {ref} refused: index file {member.index_file!r} is not among the manifest's "
                "checksummed files"
            )
    home = vdir.resolve()
    for name, digest in manifest.files.items():
        if not _plain_file_name(name):
            raise BankError(f"bank {ref} refused: listed file {name!r} is not a plain file name")
        path = vdir / name
        if not path.is_file():
            raise BankError(f"bank {ref} is incomplete: {name} is missing")
        if path.resolve().parent != home:
            raise BankError(f"bank {ref} refused: {name} resolves outside the version")
        if sha256_file(path) != digest:
            raise BankError(f"bank {ref} is corrupt: {name} does not match its sha256")
    return vdir, manifest


def load_bank(
    banks: Path, category: str, version: str | None = None, device: str = "cpu", origin: str | None = None
) -> Bank:
    """Load a version (the active one by default), verifying where it lies, every checksum and the manifest
    (:func:`verify_version`). ``origin`` (e.g. "named in Redis") tells a refusal where the version came from."""
    check_category(category)
    if version is None:
        version = active_version(banks, category)
        if version is None:
            raise BankError(
                f"no bank for category {category!r}: {category}/{ACTIVE} not found (run build-bank first)"
            )
        origin = origin or f"named in {category}/{ACTIVE}"
    vdir, manifest = verify_version(banks, category, version, origin or "requested")
    indices = []
    for member in manifest.members:
        index = PatchIndex.load(vdir / member.index_file, kind=member.index_kind, device=device)
        if index.dim != member.features.dim or len(index) != member.coreset.size:
            raise BankError(
                f"bank {category}/{version}: {member.index_file} holds {len(index)} x {index.dim}, "
                f"manifest says {member.coreset.size} x {member.features.dim}"
            )
        indices.append(index)
    return Bank(manifest, indices, vdir)


def index_files(n_members: int) -> list[str]:
    """File names of a version's indices: ``index.faiss`` for one bank, ``index0.faiss``... for several."""
    return [INDEX_FILE] if n_members == 1 else [f"index{i}.faiss" for i in range(n_members)]
