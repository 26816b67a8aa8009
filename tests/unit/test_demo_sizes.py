"""Per-category image sizes of the demo generator (``make-demo-data --size 400 --size bracket=480x400``): a
category of its own size, the others' files unchanged, and the flag's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from patchbank.cli import parser_for, run_command
from patchbank.errors import InputError
from patchbank_synthetic.cli import MAKE_DEMO_DATA, category_sizes
from patchbank_synthetic.demo_data import generate

COUNTS = {"n_train": 1, "n_validation": 1, "n_test": 1}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_category_of_its_own_size_leaves_the_others_as_they_were(tmp_path: Path) -> None:
    mixed, plain = tmp_path / "mixed", tmp_path / "plain"
    generate(mixed, ["puck", "bracket"], size=(48, 48), sizes={"bracket": (64, 40)}, progress=False, **COUNTS)
    generate(plain, ["puck"], size=(48, 48), progress=False, **COUNTS)
    assert _files(mixed / "puck") == _files(plain / "puck")
    for path in (mixed / "bracket").rglob("*.png"):
        with Image.open(path) as im:
            assert im.size == (64, 40), path
    with Image.open(mixed / "puck/test/cut/rgb/000.png") as im:
        assert im.size == (48, 48)


def test_the_flag_sets_every_size_and_each_category_size() -> None:
    p = parser_for(MAKE_DEMO_DATA)
    args = p.parse_args(["out", "--size", "bracket=480x400", "--size", "64", "--size", "puck=50"])
    assert args.size == "64"
    assert category_sizes(args) == {"bracket": (480, 400), "puck": (50, 50)}
    assert category_sizes(p.parse_args(["out"])) == {} and p.parse_args(["out"]).size == "400"
    with pytest.raises(InputError, match=r"--size puck=4x4x4: the size must be PX or WIDTHxHEIGHT"):
        category_sizes(p.parse_args(["out", "--size", "puck=4x4x4"]))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--size", "nut=64"], "a size is given for category 'nut', which is not generated"),
        (["--categories", "puck", "--size", "bracket=64"], "which is not generated (categories: puck)"),
        (["--size", "bracket=20x64"], "size width must be an integer >= 32"),
        (["--layout", "real3d", "--size", "puck=64"], "--size CATEGORY=SIZE is for --layout mvtec3d"),
    ],
)
def test_bad_sizes_exit_2_with_one_line(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_command(MAKE_DEMO_DATA, [str(tmp_path / "out"), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
