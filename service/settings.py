"""Service configuration: the shared :class:`patchbank.config.Settings` (``PATCHBANK_*`` and the TOML file)
plus what only the service reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from patchbank.config import Settings
from patchbank.decode import DEFAULT_MAX_PIXELS
from patchbank.preprocess import DEFAULT_MAX_MAP_SIDE

DEFAULT_MAX_POINTS = 4_000_000  # a 3D-only bank's cloud: 48 MB as binary float32 PCD, under the upload limit


class ServiceSettings(Settings):
    max_upload_mb: float = Field(64.0, gt=0, description="largest request body, MiB (413 above)")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description="decoded pixels (width x height) an rgb or xyz input may have, checked before decoding "
        "(413 above)",
    )
    max_points: int = Field(
        DEFAULT_MAX_POINTS,
        ge=1,
        description="points an unorganized cloud sent to a 3D-only bank may have, checked from its header before "
        "decoding (413 above)",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated keys for X-API-Key; empty = no authentication"
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated keys allowed to reload banks (default: api_keys)"
    )
    open_admin: bool = Field(
        False,
        description="admin routes (reload) without a key when none is configured; default: closed (403)",
    )
    concurrency: int = Field(1, ge=1, description="samples scored at the same time (worker threads)")
    queue_size: int = Field(8, ge=0, description="requests allowed to wait; beyond that 503 + Retry-After")
    max_batch: int = Field(
        8, ge=1, description="concurrent /score requests of one bank scored in one batch (1: no batching)"
    )
    max_batch_samples: int = Field(
        8,
        ge=1,
        description="samples one /score/batch request may hold (413 above); each counts against "
        "concurrency + queue_size, so at most their sum (the default is lowered to it)",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds a client has to send a request's headers; then it is disconnected"
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="longest pause while a request's body arrives; then the client is disconnected",
    )
    max_connections: int = Field(
        200, ge=1, description="open connections a replica accepts; requests beyond it are answered 503"
    )
    required_categories: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated categories whose banks must load for /readyz to say ready (default: any "
        "one bank)",
    )
    default_map: Literal["none", "png", "overlay", "array"] = Field(
        "png",
        description="anomaly map format by default: none, png (heatmap), overlay (over the image) or array",
    )
    max_map_side: int = Field(
        DEFAULT_MAX_MAP_SIDE,
        ge=16,
        description="pixels on the longer side of the answer's map: the input's resolution, scaled down "
        "(aspect kept) above this",
    )
    log_json: bool = Field(True, description="structured JSON-lines logs")
    sync_interval_s: float = Field(2.0, gt=0, description="how often a replica re-reads the shared registry")
    stream_maxlen: int = Field(10000, ge=1, description="score events kept per category in the Redis stream")
    idempotency_ttl_s: int = Field(86400, ge=1, description="how long an Idempotency-Key's answer is kept")
    recent_size: int = Field(
        200, ge=1, le=100000, description="decisions a replica keeps for the live view (GET /recent)"
    )
    recent_samples: int = Field(
        20,
        ge=0,
        description="last samples whose uploaded files and map a replica keeps for the console and for review "
        "(GET /recent/{id}/rgb, /map; POST /feedback); 0 = keep none",
    )
    recent_samples_mb: float = Field(
        64.0, ge=0, description="MiB those samples may take together; the oldest go first"
    )
    feedback_dir: Path | None = Field(
        None, description="folder of review records (POST /feedback); default: <banks>/.feedback"
    )
    feedback_keep: int = Field(
        1000, ge=1, description="review records kept per category; the oldest are deleted beyond it"
    )
    auto_accept_below: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep OK parts scoring below this quantile of the bank's calibration goods as confirmed-good "
        "refresh candidates without review (e.g. 0.5: below the median good part); none: off",
    )
    recall_dir: Path | None = Field(
        None,
        description="folder of the banks' recall statistics (how often each bank vector matched a part "
        "decided OK, and when last), one file per replica and bank version; default: <banks>/.recall",
    )
    recall_flush_s: float = Field(
        30.0, gt=0, description="how often a replica writes its recall statistics (and pushes them to Redis)"
    )
    console_samples: Path | None = Field(
        None,
        description="a dataset folder (MVTec 3D-AD layout) whose test parts the console's Inspect page offers "
        "to score; none: parts are uploaded only",
    )

    @field_validator("api_keys", "admin_keys", "required_categories", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _batch_fits(self) -> ServiceSettings:
        capacity = self.concurrency + self.queue_size
        if "max_batch_samples" in self.model_fields_set and self.max_batch_samples > capacity:
            raise ValueError(
                f"max_batch_samples ({self.max_batch_samples}) exceeds concurrency + queue_size ({capacity}): "
                "such a batch could never be admitted"
            )
        return self

    @property
    def batch_cap(self) -> int:
        """Samples one batch may hold: ``max_batch_samples``, or fewer when the queue is smaller (default)."""
        return min(self.max_batch_samples, self.concurrency + self.queue_size)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def admins(self) -> list[str]:
        return self.admin_keys or self.api_keys
