"""Parts by name: registries carry their parts' metadata, and the command line's flags come from options
models (:mod:`patchbank.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from patchbank.cli import Command, add_model_flags, collect, execute, parse_model
from patchbank.errors import InputError
from patchbank.features import EXTRACTORS
from patchbank.fusion import FUSION_RULES
from patchbank.methods import parse_method
from patchbank.weights import WEIGHT_SOURCES, WeightsRequest


def test_metadata_comes_from_the_registered_classes() -> None:
    assert {"fpfh", "rgb", "dino", "rgb+fpfh"} <= set(EXTRACTORS.names())
    assert not EXTRACTORS.get("fpfh").needs_weights and EXTRACTORS.get("rgb").needs_weights
    assert (EXTRACTORS.get("rgb+fpfh").default_weights or "").startswith(
        "pretrained"
    )  # BTF's wide_resnet50_2
    assert (EXTRACTORS.get("rgb").default_weights or "").startswith("package")  # the installed weights
    assert parse_method("rgb/fpfh").needs_weights and not parse_method("fpfh").needs_weights
    assert set(FUSION_RULES.names()) == {"max", "svm"}
    assert set(WEIGHT_SOURCES.names()) >= {"pretrained", "file", "random", "package"}
    with pytest.raises(InputError, match="unknown feature extractor 'sift'; known: cfm, cpmf, dino, fpfh"):
        EXTRACTORS.get("sift")


@pytest.mark.parametrize(
    ("text", "source", "options"),
    [
        ("random", "random", {}),
        ("random:7", "random", {"seed": "7"}),
        ("file:/m/w.pt", "file", {"path": "/m/w.pt"}),
        ("/m/w.safetensors", "file", {"path": "/m/w.safetensors"}),
        ("w.pth", "file", {"path": "w.pth"}),
        ("pretrained:tv_in1k", "pretrained", {"tag": "tv_in1k"}),
        (None, None, {}),
    ],
)
def test_weights_specs(text: str | None, source: str | None, options: dict[str, str]) -> None:
    req = WeightsRequest.parse(text)
    assert (req.source, req.options) == (source, options)


def test_a_bad_weights_spec_names_the_sources() -> None:
    with pytest.raises(InputError, match="NAME one of file, package, pretrained, random"):
        WeightsRequest.parse("hub")


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    depth: float = Field(0.005, gt=0, description="metres")


class Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="required")
    layers: tuple[int, ...] = Field((2, 3), description="levels")
    mode: Literal["a", "b"] = "a"
    fast: bool = True
    inner: Inner = Field(default_factory=Inner)
    extra: Inner | None = None
    fitted: float | None = Field(None, json_schema_extra={"cli": False})


def _parser(namespace: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_model_flags(p, Opts, namespace)
    return p


def test_flags_from_a_model_round_trip_to_the_model() -> None:
    args = _parser("toy").parse_args(
        [
            "--toy.name",
            "x",
            "--toy.layers",
            "1,2,4",
            "--toy.mode",
            "b",
            "--no-toy.fast",
            "--toy.inner.depth",
            "0.01",
        ]
    )
    assert collect(args, "toy") == {
        "name": "x",
        "layers": [1, 2, 4],
        "mode": "b",
        "fast": False,
        "inner": {"depth": 0.01},
    }
    opts = parse_model(Opts, args, "toy")
    assert opts.layers == (1, 2, 4) and opts.inner.depth == 0.01 and opts.extra is None
    switched = _parser().parse_args(["--name", "x", "--extra"])
    assert parse_model(Opts, switched).extra == Inner()
    nested = _parser().parse_args(["--name", "x", "--extra.depth", "0.2"])
    assert parse_model(Opts, nested).extra == Inner(depth=0.2)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--name", "x", "--fitted", "1"])  # fitted values are not flags


def test_a_bad_value_names_its_flag() -> None:
    args = _parser("toy").parse_args(["--toy.name", "x", "--toy.inner.depth", "-1"])
    with pytest.raises(InputError, match=r"^--toy\.inner\.depth: Input should be greater than 0"):
        parse_model(Opts, args, "toy")


def test_a_missing_engine_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def needs_torch(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    command = Command("build", "test", lambda p: None, needs_torch)
    assert execute(command, argparse.Namespace()) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: 'patchbank build' needs the engine (module 'torch' is not installed): "
        "pip install 'patchbank[engine]'"
    )


def test_help_does_not_import_the_engine(tmp_path: Path) -> None:
    """``patchbank --help`` and ``patchbank build --help`` load the command modules without torch."""
    import subprocess

    code = (
        "import sys; from patchbank.cli import main\n"
        "for argv in (['--help'], ['build', '--help']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "heavy = {'torch', 'faiss', 'open3d', 'timm', 'fastapi'} & set(sys.modules)\n"
        "print('HEAVY', sorted(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert "--rgb.backbone" in out.stdout and "--fpfh.window" in out.stdout and "serve" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"
