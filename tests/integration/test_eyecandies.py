"""Eyecandies end to end through the commands: a synthetic set in the released layout, converted by
``convert-eyecandies``, built and evaluated by ``build``, then one sample scored through ``predict()``."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchbank.bank import load_bank
from patchbank.cli import run_command
from patchbank.data import list_samples
from patchbank.eyecandies_cli import CONVERT_EYECANDIES
from patchbank.predict import Sample, predict
from patchbank.scorer import load_scorer
from patchbank_builder.cli import BUILD
from patchbank_synthetic.cli import MAKE_DEMO_DATA

CATEGORY = "Confetto"
N_TEST = 3  # test_public: 3 good, 3 bad


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 5])
def test_eyecandies_to_a_scored_sample(seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out, banks = tmp_path / "eyecandies", tmp_path / "mvtec", tmp_path / "banks"
    counts = ["--train", "6", "--validation", "3", "--test", str(N_TEST)]
    demo = [
        str(src),
        "--layout",
        "eyecandies",
        "--categories",
        CATEGORY,
        *counts,
        "--size",
        "128",
        "--seed",
        str(seed),
        "--quiet",
    ]
    assert run_command(MAKE_DEMO_DATA, demo) == 0
    assert (src / CATEGORY / "test_public" / "data" / "5_depth.png").is_file()

    assert run_command(CONVERT_EYECANDIES, [str(src), str(out), "--quiet"]) == 0
    first = capsys.readouterr().out
    assert (
        f"{CATEGORY}: test/bad 3, test/good 3, train/good 6, validation/good 3; 15 written, 0 already"
        in first
    )
    assert run_command(CONVERT_EYECANDIES, [str(src), str(out), "--quiet"]) == 0  # resumes: nothing to do
    assert "0 written, 15 already there" in capsys.readouterr().out
    assert run_command(CONVERT_EYECANDIES, [str(src), str(out), "--lighting", "5"]) == 2  # not resumable
    assert capsys.readouterr().err.startswith(f"error: {out / CATEGORY} was converted with {{'lighting': 4")

    build = ["--category", CATEGORY, "--data-root", str(out), "--banks", str(banks), "--method", "fpfh"]
    assert run_command(BUILD, [*build, "--coreset.ratio", "0.1", "--quiet"]) == 0
    assert "I-AUROC" in capsys.readouterr().out

    manifest = load_bank(banks, CATEGORY).manifest
    ev = manifest.evaluation
    assert ev is not None and ev.n_test == 2 * N_TEST and set(ev.per_defect) == {"bad"}
    assert manifest.training.n_samples == 6  # the converted train/good
    recorded = {s.name: s.image_score for s in ev.scores}
    assert len(recorded) == 2 * N_TEST

    ref = list_samples(out, CATEGORY, "test", ["bad"])[0]
    (pred,) = predict(load_scorer(banks, CATEGORY), [Sample.from_ref(ref)])
    assert pred.image_score == pytest.approx(recorded[ref.name], rel=1e-6)  # evaluate scored it the same
