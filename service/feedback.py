"""Review feedback: an operator's or the MES's verdict on a decision, kept with the sample's files.

Each record is a folder ``<feedback_dir>/<category>/<time>-<decision id>/`` holding ``record.json`` and the
sample's uploads (``rgb.<ext>``, ``xyz.<ext>``) as the line sent them: enough for a later refresh of the
bank from confirmed-good parts (the files, the category, the bank version that scored them, the score, the
cloud's unit and camera). A folder appears whole or not at all (written aside, then renamed); each category
keeps its newest ``feedback_keep`` records. Names on disk come from the service, never from the client."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from patchbank.bank import CATEGORY_RE
from patchbank.errors import PatchbankError
from patchbank_service.models import MAX_SAMPLE_ID
from patchbank_service.recent import CATEGORY_PATTERN, ID_PATTERN, Scored, StoredSample

log = logging.getLogger("patchbank.feedback")

Verdict = Literal["confirmed", "false_alarm", "missed_defect"]
FEEDBACK_PREFIX = "patchbank:feedback:"  # + category: a capped stream of pointers to the records
RECORD = "record.json"
STALE_S = 3600.0  # a half-written folder older than this is left over from a crash: removed
XYZ_EXTS = frozenset({"tiff", "tif", "npy", "png", "ply", "pcd"})
MAGICS = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"\x93NUMPY", "npy"), (b"ply", "ply"))
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class FeedbackNotStored(PatchbankError):
    """The feedback folder cannot be written (e.g. the banks' volume is mounted read-only)."""


class FeedbackRequest(BaseModel):
    """A verdict on a decision, named by its id or by the sample's id and category (its newest decision)."""

    model_config = ConfigDict(extra="forbid")

    decision_id: str | None = Field(None, pattern=ID_PATTERN, description="a decision's id from /recent")
    sample_id: str | None = Field(None, min_length=1, max_length=MAX_SAMPLE_ID, description="the line's id")
    category: str | None = Field(None, pattern=CATEGORY_PATTERN, description="with sample_id")
    verdict: Verdict = Field(
        description="confirmed: the decision was right; false_alarm: NG but the part is good; "
        "missed_defect: OK but the part is defective"
    )
    who: str = Field(min_length=1, max_length=100, description="the operator or system giving the verdict")
    note: str | None = Field(None, max_length=1000, description="free text")

    @model_validator(mode="after")
    def _names_one_decision(self) -> Self:
        if (self.decision_id is None) == (self.sample_id is None):
            raise ValueError("give either decision_id, or sample_id with category")
        if self.sample_id is not None and self.category is None:
            raise ValueError("sample_id needs its category")
        return self


class FeedbackRecord(BaseModel):
    """A stored verdict: who said what about which decision, and where the sample's files are."""

    id: str = Field(description="the record's folder name: <UTC time>-<decision id>")
    path: str = Field(description="<category>/<id>, relative to the feedback folder")
    time: float = Field(description="when the verdict was stored, epoch seconds")
    replica: str = Field(description="the replica that stored it")
    verdict: Verdict
    who: str
    note: str | None = None
    decision: Scored
    xyz_unit: str | None = Field(None, description="the unit the cloud was sent in (None: metres)")
    intrinsics: dict[str, Any] | None = Field(None, description="the depth image's camera, as sent")
    files: dict[str, str] = Field(
        default_factory=dict, description="'rgb' and 'xyz': file names inside the record's folder"
    )
    files_missing: str | None = Field(None, description="why the sample's files are not kept with it")


class FeedbackList(BaseModel):
    source: Literal["local", "redis"] = Field(
        description="local: this replica's feedback folder; redis: every replica's records"
    )
    records: list[FeedbackRecord] = Field(description="newest first")


def extension(data: bytes, name: str | None = None) -> str:
    """A file extension for uploaded bytes: a known one from the upload's name, else from the content."""
    suffix = (name or "").rpartition(".")[2].lower() if name and "." in name else ""
    if suffix in XYZ_EXTS:
        return suffix
    if data.startswith(TIFF_MAGICS):
        return "tiff"
    return next((ext for magic, ext in MAGICS if data.startswith(magic)), "bin")


def folder_name(at: float, decision_id: str) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + decision_id


class FeedbackStore:
    """The records on this replica's disk, ``keep`` per category."""

    def __init__(self, root: Path, keep: int, replica: str) -> None:
        self.root, self.keep, self.replica = Path(root), keep, replica

    def write(
        self, ask: FeedbackRequest, decision: Scored, kept: StoredSample | None, missing: str | None
    ) -> FeedbackRecord:
        """Store one record (runs in a worker thread): files and record.json aside, fsynced, then renamed
        into place; then the category's oldest records beyond ``keep`` are deleted."""
        try:
            return self._write(ask, decision, kept, missing)
        except OSError as exc:
            raise FeedbackNotStored(
                f"feedback could not be stored ({exc.strerror or type(exc).__name__}): the feedback folder "
                "must be writable (PATCHBANK_FEEDBACK_DIR; default: .feedback in the banks directory)"
            ) from exc

    def _write(
        self, ask: FeedbackRequest, decision: Scored, kept: StoredSample | None, missing: str | None
    ) -> FeedbackRecord:
        at = time.time()
        category = self.root / decision.category
        category.mkdir(parents=True, exist_ok=True)  # the umask's permissions
        files: dict[str, str] = {}
        if kept is not None:
            files = {"rgb": f"rgb.{extension(kept.rgb)}", "xyz": f"xyz.{extension(kept.xyz, kept.xyz_name)}"}
        name = folder_name(at, decision.id)
        record = FeedbackRecord(
            id=name,
            path=f"{decision.category}/{name}",
            time=at,
            replica=self.replica,
            verdict=ask.verdict,
            who=ask.who,
            note=ask.note,
            decision=Scored.model_validate(decision.model_dump(include=set(Scored.model_fields))),
            xyz_unit=kept.xyz_unit if kept else None,
            intrinsics=kept.intrinsics.model_dump() if kept and kept.intrinsics else None,
            files=files,
            files_missing=missing,
        )
        aside = category / f".tmp-{secrets.token_hex(6)}"
        aside.mkdir()
        try:
            contents = {RECORD: record.model_dump_json(indent=2).encode()}
            if kept is not None:
                contents |= {files["rgb"]: kept.rgb, files["xyz"]: kept.xyz}
            for fname, data in contents.items():
                with open(aside / fname, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(aside)
            os.rename(aside, category / name)
            _fsync_dir(category)
        except BaseException:
            shutil.rmtree(aside, ignore_errors=True)
            raise
        self._prune(category)
        return record

    def _prune(self, category: Path) -> None:
        names = sorted(p.name for p in category.iterdir() if not p.name.startswith("."))
        for old in names[: max(0, len(names) - self.keep)]:
            shutil.rmtree(category / old, ignore_errors=True)
        now = time.time()
        for p in category.glob(".tmp-*"):
            try:
                if now - p.stat().st_mtime > STALE_S:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass

    def newest(self, category: str | None, limit: int) -> list[FeedbackRecord]:
        """The newest ``limit`` records, of one category or of all, newest first."""
        if not self.root.is_dir():
            return []
        if category is not None:
            folders = [self.root / category]
        else:
            folders = [p for p in self.root.iterdir() if p.is_dir() and CATEGORY_RE.match(p.name)]
        found = [
            p for folder in folders if folder.is_dir() for p in folder.iterdir() if not p.name.startswith(".")
        ]
        found.sort(key=lambda p: p.name, reverse=True)
        records = []
        for p in found:
            if len(records) == limit:
                break
            try:
                records.append(FeedbackRecord.model_validate_json((p / RECORD).read_bytes()))
            except (OSError, ValidationError) as exc:
                log.warning("skipping feedback record %s: %s", p.name, type(exc).__name__)
        return records


def pointer(record: FeedbackRecord) -> dict[str, str]:
    """The record as its stream entry: where it is, its summary, and the record itself."""
    return {
        "path": record.path,
        "replica": record.replica,
        "verdict": record.verdict,
        "category": record.decision.category,
        "record": record.model_dump_json(),
    }


def from_pointer(fields: dict[str, str]) -> FeedbackRecord | None:
    try:
        return FeedbackRecord.model_validate(json.loads(fields["record"]))
    except (KeyError, ValueError, ValidationError):
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
