"""The offline commands' options as typed models: the command line's flags are generated from them
(:func:`patchbank.cli.add_model_flags`), so the flags, their help and their checks cannot drift apart.

Light on purpose (pydantic only): ``patchbank build --help`` never imports the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from patchbank.coreset import CoresetSpec
from patchbank.methods import DEFAULT_METHOD

DEFAULT_TARGET_FRR = 0.01
DEFAULT_TOLERANCE = 0.01
DEFAULT_KEEP = 5
RULES = ("target-frr", "f1")


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Where(Options):
    """Which category, and where its data and banks live (flags, else settings: PATCHBANK_*, patchbank.toml)."""

    category: str = Field(description="category name, e.g. cable_gland")
    data_root: Path | None = Field(
        None, description="dataset root (MVTec 3D-AD layout); default PATCHBANK_DATA_ROOT"
    )
    banks: Path | None = Field(None, description="banks directory; default PATCHBANK_BANKS")
    device: str | None = Field(None, description="cpu or cuda (default: cuda when available)")
    quiet: bool = Field(False, description="no progress bars, warnings only")


class Publishing(Options):
    publish: bool = Field(
        False, description="make the new version active in Redis (REDIS_URL) so every replica swaps to it"
    )
    force: bool = Field(False, description="publish even if it evaluates worse than the active one")
    tolerance: float = Field(
        DEFAULT_TOLERANCE, ge=0, description="how much worse (I-AUROC, AU-PRO, P-AUROC) is still published"
    )
    keep: int = Field(DEFAULT_KEEP, ge=1, description="versions kept for rollback when publishing")


class Features(Options):
    """How banks are built; each extractor's own options come as --NAME.OPTION flags."""

    weights: str | None = Field(
        None,
        description="backbone weights of members that need them: NAME[:VALUE] (pretrained[:TAG], "
        "file:PATH, random[:SEED] for tests and demos) or a file's path; default PATCHBANK_WEIGHTS, else "
        "each extractor's default source (--NAME.weights sets one member's)",
    )
    coreset: CoresetSpec = Field(default_factory=CoresetSpec, description="coreset subsampling")
    index: Literal["flat", "hnsw"] | None = Field(
        None, description="search index: flat (exact) or hnsw (approximate); default hnsw from 256-d up"
    )
    batch_size: int = Field(8, ge=1, description="samples per feature batch")
    intrinsics: Path | None = Field(
        None,
        description="JSON of the depth camera {fx, fy, cx, cy, depth_scale}: reads depth-image datasets and "
        "is stored in the bank for lines that send depth images alone (default: the dataset's "
        "<category>/intrinsics.json, else MVTec 3D-AD's <category>/calibration/camera_parameters.json)",
    )
    target_frr: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=f"calibration: false-reject rate aimed at (default {DEFAULT_TARGET_FRR})",
    )


class BuildOptions(Where, Features, Publishing):
    method: str = Field(
        DEFAULT_METHOD,
        description="scoring method: one extractor for one bank, several joined by / for late fusion "
        "(@RULE picks the fusion rule, e.g. rgb/fpfh@svm)",
    )
    calibrate: bool = Field(
        False, description="set the thresholds at --target-frr on held-out goods, with a cross-validated FRR"
    )
    evaluate: bool = Field(True, description="evaluate on the test split")
    json_file: Path | None = Field(
        None, json_schema_extra={"flag": "json"}, description="also write the evaluation as JSON"
    )
    report: Path | None = Field(
        None, description="also write the evaluation's self-contained HTML report into this folder"
    )


class AllCategories(Options):
    """``--all``: the survey over every category of the data root (:mod:`patchbank_builder.survey`)."""

    category: str | None = Field(None, description="category name, e.g. cable_gland (or --all)")
    all: bool = Field(
        False,
        description="every category of the data root (its folders with a train folder): one table per "
        "metric, a row per method, a column per category; resumes an interrupted run",
    )
    out: Path | None = Field(
        None,
        description="--all: the survey's folder (cells/, survey.md, .csv, .json); default <banks>/survey",
    )
    fresh: bool = Field(False, description="--all: recompute every cell, even those a previous run finished")


class CompareOptions(AllCategories, Where, Features):
    methods: tuple[str, ...] = Field(
        ("rgb+fpfh", "rgb/fpfh", "rgb/fpfh@svm"), description="methods to build, calibrate and evaluate"
    )
    json_file: Path | None = Field(
        None, json_schema_extra={"flag": "json"}, description="also write every method's evaluation as JSON"
    )


class EvaluateOptions(AllCategories, Where):
    method: str | None = Field(
        None,
        description="--all: the method surveyed (default: each category's active bank's); a category "
        "without an active bank of it gets one built",
    )
    version: str | None = Field(None, description="bank version (default: the active one)")
    weights: str | None = Field(None, description="the bank's weights file if it moved (sha256 must match)")
    json_file: Path | None = Field(
        None,
        json_schema_extra={"flag": "json"},
        description="write the figures and per-sample scores as JSON",
    )
    report: Path | None = Field(
        None,
        description="write a self-contained HTML report (curves, distributions, galleries) into this folder",
    )


class CalibrateOptions(Where, Publishing):
    version: str | None = Field(None, description="bank version to calibrate (default: the active one)")
    rule: Literal["target-frr", "f1"] = Field(
        "target-frr",
        description="target-frr: at a false-reject rate on held-out goods; f1: best F1 on labelled anomalies",
    )
    target_frr: float = Field(DEFAULT_TARGET_FRR, gt=0, lt=1, description="false-reject rate aimed at")
    labelled: str = Field(
        "test", description="rule f1: the split with labelled anomalies (good and defect kinds with masks)"
    )
    weights: str | None = Field(None, description="the bank's weights file if it moved (rule f1)")


class PublishOptions(Publishing):
    category: str = Field(description="category name")
    version: str = Field(description="the version to make active, e.g. v0003 (also: rollback)")
    banks: Path | None = Field(None, description="banks directory; default PATCHBANK_BANKS")
    quiet: bool = Field(False, description="warnings only")


class RefreshOptions(Where):
    """``refresh-bank``: the active bank plus confirmed-good parts, size bounded, the unrecalled forgotten."""

    feedback_dir: Path | None = Field(
        None, description="the service's review records (PATCHBANK_FEEDBACK_DIR); default <banks>/.feedback"
    )
    recall_dir: Path | None = Field(
        None,
        description="the replicas' recall statistics when Redis is not used (PATCHBANK_RECALL_DIR); "
        "default <banks>/.recall",
    )
    half_life_days: float = Field(
        7.0, gt=0, description="days after which a bank vector no part recalled keeps half its retention"
    )
    size: int | None = Field(
        None,
        ge=1,
        description="the most vectors per member (default: twice the built version's size, then kept by every "
        "refresh)",
    )
    holdout: float = Field(
        0.3, gt=0, lt=1, description="share of the confirmed-good parts kept aside to set the thresholds"
    )
    confirmations: int = Field(
        2, ge=1, description="reviewers needed for a part that scores above the threshold (else held back)"
    )
    publish: bool = Field(
        True, description="publish the new version through the guard (--no-publish: write it only)"
    )
    force: bool = Field(False, description="publish even if it evaluates worse than the active one")
    tolerance: float = Field(
        DEFAULT_TOLERANCE, ge=0, description="how much worse (I-AUROC, AU-PRO, P-AUROC) is still published"
    )
    keep: int = Field(DEFAULT_KEEP, ge=1, description="versions kept for rollback when publishing")
