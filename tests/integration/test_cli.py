"""The command-line tools end to end on the demo data: real files, real banks, exit codes, messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from patchbank.cli import run_command
from patchbank.scorer import load_scorer
from patchbank_builder.build import BuildResult
from patchbank_builder.cli import EVALUATE, build_bank_main
from patchbank_synthetic.cli import MAKE_DEMO_DATA
from tests.conftest import CATEGORY


def test_evaluate_json_matches_the_build(
    fpfh_build: tuple[Path, BuildResult], demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    banks, result = fpfh_build
    out = tmp_path / "eval.json"
    code = run_command(
        EVALUATE,
        [
            "--category",
            CATEGORY,
            "--data-root",
            str(demo_root),
            "--banks",
            str(banks),
            "--json",
            str(out),
            "--quiet",
        ],
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "I-AUROC" in printed and "stain" in printed and "false-reject rate" in printed
    figures = json.loads(out.read_text())
    assert {"image_auroc", "pixel_auroc", "au_pro", "per_defect", "n_test"} <= set(figures)
    assert figures["n_test"] == 6 and set(figures["per_defect"]) == {"bump", "crack", "cut", "hole", "stain"}
    assert result.evaluation is not None
    built = {s.name: s.image_score for s in result.evaluation.scores}
    for s in figures["scores"]:  # the reloaded bank scores exactly as the in-memory one did
        assert s["image_score"] == pytest.approx(built[s["name"]], rel=1e-6)
    assert figures["au_pro"] == pytest.approx(result.evaluation.au_pro, rel=1e-9)


def test_user_errors_exit_2_with_one_line(
    demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--category", CATEGORY, "--data-root", str(demo_root), "--banks", str(tmp_path)]
    cases = [
        ([*base[2:], "--category", "tire"], "category 'tire' not found"),
        (base[:4], "no banks directory given"),
        ([*base, "--coreset.ratio", "2"], "--coreset.ratio: Input should be less than or equal to 1"),
        (
            [*base, "--method", "fpfh", "--rgb.backbone", "resnet18"],
            "--rgb.backbone: rgb is not part of fpfh",
        ),
        (
            [*base, "--method", "rgb", "--fpfh.neighbours", "kdtree"],
            "--fpfh.neighbours: fpfh is not part of rgb",
        ),
        ([*base, "--method", "rgb", "--fpfh.background"], "--fpfh.background: fpfh is not part of rgb"),
        (
            [*base, "--method", "rgb/fpfh", "--rgb+fpfh.normalise", "modality"],
            "--rgb+fpfh.normalise: rgb+fpfh is not part of rgb/fpfh",
        ),
        ([*base, "--method", "rgb/fpfh", "--svm.nu", "0.3"], "--svm.nu: svm is not part of rgb/fpfh"),
        ([*base, "--method", "fpfh", "--fpfh.window", "0"], "--fpfh.window: Input should be greater than"),
        ([*base, "--method", "rgb/nope"], "unknown method 'rgb/nope': nope is not a feature extractor"),
        ([*base, "--method", "fpfh@svm"], "a fusion rule needs two or more members"),
        ([*base, "--method", "rgb/fpfh@mean"], "unknown fusion rule 'mean'"),
        ([*base, "--target-frr", "1.5", "--calibrate"], "--target-frr: Input should be less than 1"),
        ([*base, "--target-frr", "0.05"], "--target-frr applies to the calibration: add --calibrate"),
        ([*base, "--method", "rgb", "--weights", str(tmp_path / "nope.pt")], "weights file not found"),
    ]
    for argv, message in cases:
        assert build_bank_main([*argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last and "Traceback" not in err
    assert (
        run_command(
            EVALUATE, ["--category", CATEGORY, "--data-root", str(demo_root), "--banks", str(tmp_path)]
        )
        == 2
    )
    assert "no bank for category 'puck'" in capsys.readouterr().err


def test_headline_command_with_configured_locations(
    demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`build-bank --category C` works exactly as written once the locations are configured (TOML file)."""
    config = tmp_path / "patchbank.toml"
    config.write_text(f'data_root = "{demo_root}"\nbanks = "{tmp_path / "banks"}"\n')
    monkeypatch.setenv("PATCHBANK_CONFIG", str(config))
    monkeypatch.setenv("PATCHBANK_WEIGHTS", str(tmp_path / "unused.pt"))  # not used: fpfh has no weights
    assert build_bank_main(["--category", CATEGORY, "--method", "fpfh", "--no-evaluate", "--quiet"]) == 0
    assert (tmp_path / "banks" / CATEGORY / "ACTIVE").read_text().strip() == "v0001"
    monkeypatch.setenv("PATCHBANK_BANKS", str(tmp_path / "env-banks"))  # the environment beats the file
    assert build_bank_main(["--category", CATEGORY, "--method", "fpfh", "--no-evaluate", "--quiet"]) == 0
    assert (tmp_path / "env-banks" / CATEGORY / "v0001").is_dir()


def test_build_options_reach_the_manifest(demo_root: Path, tmp_path: Path) -> None:
    """--fpfh.neighbours kdtree (BTF's Open3D recipe) and --index hnsw are recorded and used when loading."""
    banks = tmp_path / "banks"
    argv = ["--category", CATEGORY, "--data-root", str(demo_root), "--banks", str(banks), "--method", "fpfh"]
    assert build_bank_main([*argv, "--fpfh.neighbours", "kdtree", "--index", "hnsw", "--quiet"]) == 0
    (member,) = json.loads((banks / CATEGORY / "v0001" / "manifest.json").read_text())["members"]
    assert member["features"]["options"]["neighbours"] == "kdtree" and member["index_kind"] == "hnsw"
    scorer = load_scorer(banks, CATEGORY)
    assert scorer.extractors[0].backend == "open3d" and scorer.bank.indices[0].kind == "hnsw"


@pytest.mark.slow
def test_rgb_fpfh_random_weights_build_and_evaluate(
    demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BTF's rgb+fpfh with the default backbone (wide_resnet50_2), randomly initialised on purpose: no
    weights here."""
    banks = tmp_path / "banks"
    common = ["--category", CATEGORY, "--data-root", str(demo_root), "--banks", str(banks), "--quiet"]
    assert build_bank_main([*common, "--method", "rgb+fpfh", "--weights", "random:0"]) == 0
    out = capsys.readouterr().out
    assert "(rgb+fpfh)" in out and "x 1569-d" in out
    (member,) = json.loads((banks / CATEGORY / "v0001" / "manifest.json").read_text())["members"]
    assert member["weights"]["kind"] == "random" and member["weights"]["seed"] == 0
    assert member["features"]["options"]["rgb"]["backbone"] == "wide_resnet50_2"
    assert run_command(EVALUATE, [*common, "--json", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["method"] == "rgb+fpfh" and 0.0 <= ev["au_pro"] <= 1.0


def test_make_demo_data_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert (
        run_command(
            MAKE_DEMO_DATA,
            [
                str(out),
                "--categories",
                "bracket",
                "--train",
                "2",
                "--validation",
                "1",
                "--test",
                "1",
                "--size",
                "64x48",
                "--quiet",
            ],
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert len(list((out / "bracket" / "train" / "good" / "rgb").iterdir())) == 2
    assert run_command(MAKE_DEMO_DATA, [str(out), "--size", "big", "--quiet"]) == 2
    assert "--size must be PX or WIDTHxHEIGHT" in capsys.readouterr().err
    shutil.rmtree(out)


def test_serve_without_a_banks_directory_says_how_to_give_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service and the offline commands share one settings model, with no silent default folder."""
    from patchbank.cli import main

    monkeypatch.delenv("PATCHBANK_BANKS", raising=False)
    monkeypatch.setenv("PATCHBANK_CONFIG", str(tmp_path / "none.toml"))
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: no banks directory given: pass --banks, set PATCHBANK_BANKS, or put it in patchbank.toml"
    )
