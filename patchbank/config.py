"""Where data and banks live, from the environment or a config file (so ``build-bank --category C`` works).

Precedence: command-line flags, then ``PATCHBANK_*`` environment variables, then the TOML file named by
``PATCHBANK_CONFIG`` (default ``./patchbank.toml``, then ``~/.config/patchbank/config.toml``), e.g.::

    data_root = "/data/mvtec3d"
    banks = "/srv/patchbank/banks"
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from patchbank.errors import ConfigError


def config_files() -> list[Path]:
    named = os.environ.get("PATCHBANK_CONFIG")
    if named:
        return [Path(named)]
    return [Path("patchbank.toml"), Path.home() / ".config" / "patchbank" / "config.toml"]


class Settings(BaseSettings):
    """Locations and defaults shared by the command-line tools and the service (which adds its own)."""

    model_config = SettingsConfigDict(env_prefix="PATCHBANK_", extra="ignore")

    data_root: Path | None = Field(None, description="dataset root in the MVTec 3D-AD layout")
    banks: Path | None = Field(None, description="directory holding one folder of bank versions per category")
    device: str | None = Field(None, description="cpu or cuda; default: cuda when available")
    weights: str | None = Field(
        None,
        description="backbone weights of new banks (NAME[:VALUE], e.g. random:0, or a file's path); a file "
        "also stands in for a bank's recorded weights file that moved (same sha256)",
    )
    redis_url: str | None = Field(
        None,
        validation_alias="REDIS_URL",
        description="redis:// or rediss:// URL shared by the replicas (active versions, score stream, "
        "idempotency); unset = one process, no Redis",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = [p for p in config_files() if p.is_file()]
        toml = [TomlConfigSettingsSource(settings_cls, toml_file=files[0])] if files else []
        return (init_settings, env_settings, *toml)


def require(value: Path | None, what: str, flag: str, env: str) -> Path:
    """The configured path, or a ConfigError saying the three ways to set it."""
    if value is None:
        raise ConfigError(f"no {what} given: pass {flag}, set {env}, or put it in patchbank.toml")
    return value


def default_device(requested: str | None = None) -> str:
    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but torch sees no CUDA GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; use cpu or cuda")
    return device


def weights_override(spec: str | Path | None) -> str | None:
    """The local file a weights setting names (a bank's moved weights file), or None for other sources."""
    from patchbank.weights import WeightsRequest

    req = WeightsRequest.parse(spec)
    return str(req.options["path"]) if req.source == "file" else None
