"""Service configuration: the shared :class:`patchbank.config.Settings` (``PATCHBANK_*`` and the TOML file)
plus what only the service reads."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from patchbank.config import Settings
from patchbank.decode import DEFAULT_MAX_PIXELS
from patchbank.preprocess import DEFAULT_MAX_MAP_SIDE


class ServiceSettings(Settings):
    max_upload_mb: float = Field(64.0, gt=0, description="largest request body, MiB (413 above)")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description="decoded pixels (width x height) an rgb or xyz input may have, checked before decoding "
        "(413 above)",
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
    default_map: Literal["none", "png", "array"] = Field("png", description="anomaly map format by default")
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

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def admins(self) -> list[str]:
        return self.admin_keys or self.api_keys
