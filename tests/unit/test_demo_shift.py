"""Line drift in the demo generator: ``shift`` changes the part's colour and texture, nothing else."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from patchbank.cli import run_command
from patchbank.errors import InputError
from patchbank_synthetic.cli import MAKE_DEMO_DATA
from patchbank_synthetic.demo_data import generate, render_sample

SIZE = (96, 96)
CATEGORIES = ("puck", "bracket")
NOISE_LEVELS = 0.01 * 255  # the largest RGB sensor noise sigma, in 8-bit levels


def _write(root: Path, **kwargs: float) -> Path:
    generate(
        root, CATEGORIES, n_train=1, n_validation=0, n_test=1, size=SIZE, seed=5, progress=False, **kwargs
    )
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tiny dataset generated with the default arguments and with shift 0, 0.5 and 1."""
    base = tmp_path_factory.mktemp("shift")
    out = {"default": _write(base / "default")}
    for shift in (0.0, 0.5, 1.0):
        out[str(shift)] = _write(base / str(shift), shift=shift)
    return out


def _files(root: Path, folder: str) -> list[Path]:
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.parent.name == folder)
    assert files
    return files


def _rgb(root: Path, rel: Path) -> np.ndarray:
    return np.asarray(Image.open(root / rel), dtype=np.float64)


def _part(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the part in an undrifted image: brighter or more colourful than the grey table."""
    return (rgb.mean(axis=2) > 100) | (rgb[..., 0] - rgb[..., 2] > 30)


def test_shift_zero_is_byte_identical_to_the_default(datasets: dict[str, Path]) -> None:
    default, zero = datasets["default"], datasets["0.0"]
    for folder in ("rgb", "xyz", "gt"):
        for rel in _files(default, folder):
            assert (zero / rel).read_bytes() == (default / rel).read_bytes(), rel
    assert _files(zero, "rgb") == _files(default, "rgb")


def test_shift_changes_the_part_colour_only(datasets: dict[str, Path]) -> None:
    zero, one = datasets["0.0"], datasets["1.0"]
    for folder in ("xyz", "gt"):
        for rel in _files(zero, folder):
            assert (one / rel).read_bytes() == (zero / rel).read_bytes(), rel
    for rel in _files(zero, "rgb"):
        before, after = _rgb(zero, rel), _rgb(one, rel)
        part = _part(before)
        assert part.mean() > 0.05, rel
        diff = np.abs(after - before).mean(axis=2)
        assert diff[part].mean() > 6 * NOISE_LEVELS, rel  # clearly visible: well above sensor noise
        near_part = binary_dilation(part, iterations=3)
        assert (diff[~near_part] == 0).all(), rel  # the table, light and noise are untouched
        # not a mere tint: the per-pixel gain varies (stronger mottling on the new material)
        ok = part & (before.min(axis=2) > 40)
        gain = np.log(after[ok, 1] / before[ok, 1])
        assert gain.std() > 0.015, rel


def test_half_shift_lies_between(datasets: dict[str, Path]) -> None:
    zero, half, one = datasets["0.0"], datasets["0.5"], datasets["1.0"]
    for rel in _files(zero, "rgb"):
        before = _rgb(zero, rel)
        part = _part(before)
        d_half = np.abs(_rgb(half, rel) - before).mean(axis=2)[part].mean()
        d_one = np.abs(_rgb(one, rel) - before).mean(axis=2)[part].mean()
        assert 0.3 * d_one < d_half < 0.7 * d_one, rel
    for rel in _files(zero, "xyz"):
        assert (half / rel).read_bytes() == (zero / rel).read_bytes(), rel


@pytest.mark.parametrize("category", CATEGORIES)
def test_stain_still_shows_on_the_new_material(category: str) -> None:
    stained = render_sample(category, "stain", size=SIZE, seed=2, shift=1.0)
    clean = render_sample(category, "stain", size=SIZE, seed=2, shift=1.0, with_defect=False)
    inside = stained.gt > 0
    assert inside.any()
    darker = clean.rgb.astype(np.float64) - stained.rgb.astype(np.float64)
    assert darker[inside].mean() > 6 * NOISE_LEVELS


@pytest.mark.parametrize("shift", [-0.1, 1.5, math.nan, True, "0.5"])
def test_bad_shift_is_refused(tmp_path: Path, shift: object) -> None:
    with pytest.raises(InputError, match=r"shift must be a number in \[0, 1\]"):
        generate(tmp_path / "out", ["puck"], n_train=1, n_test=1, size=SIZE, progress=False, shift=shift)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()  # refused before anything is written
    with pytest.raises(InputError, match="shift"):
        render_sample("puck", size=SIZE, shift=shift)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_cli_refuses_bad_shift(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    out = tmp_path / "demo"
    argv = [str(out), "--categories", "puck", "--train", "1", "--test", "1", "--size", "64", "--quiet"]
    assert run_command(MAKE_DEMO_DATA, [*argv, "--shift", value]) == 2
    assert f"shift must be a number in [0, 1], got {float(value)}" in capsys.readouterr().err
    assert not out.exists()


def test_cli_shift_writes_drifted_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--categories",
        "puck",
        "--train",
        "1",
        "--validation",
        "0",
        "--test",
        "1",
        "--size",
        "64",
        "--quiet",
    ]
    assert run_command(MAKE_DEMO_DATA, [str(tmp_path / "a"), *argv, "--shift", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert run_command(MAKE_DEMO_DATA, [str(tmp_path / "b"), *argv]) == 0
    rel = Path("puck/train/good")
    a, b = tmp_path / "a" / rel, tmp_path / "b" / rel
    assert (a / "xyz" / "000.tiff").read_bytes() == (b / "xyz" / "000.tiff").read_bytes()
    assert (a / "rgb" / "000.png").read_bytes() != (b / "rgb" / "000.png").read_bytes()
