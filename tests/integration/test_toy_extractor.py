"""A new extractor is one module: registered with one decorator, it is a method member, its options are
``--NAME.*`` flags of ``patchbank build``, and a bank built with it loads and scores (no other file touched)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from patchbank import bank as bankfmt
from patchbank.cli import main
from patchbank.data import list_samples
from patchbank.features import EXTRACTORS, FeatureExtractor, FeatureSpec, register_extractor
from patchbank.features.base import to_grid
from patchbank.predict import Sample, predict
from patchbank.preprocess import Prepared
from patchbank.scorer import load_scorer
from tests.conftest import CATEGORY


class ToyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: float = Field(1.0, gt=0, description="multiplies the colours")


@pytest.fixture
def toy() -> Iterator[type[FeatureExtractor]]:
    @register_extractor("toy")
    class Toy(FeatureExtractor):
        """The three colour channels (0-1) of each patch, times ``scale``."""

        options_model = ToyOptions

        def __init__(self, options: ToyOptions, device: str = "cpu") -> None:
            self.opts = options
            self.spec = FeatureSpec(extractor=self.name, options=options.model_dump(mode="json"), dim=3)

        def grid_maps(self, batch: Sequence[Prepared]) -> torch.Tensor:
            return to_grid(torch.from_numpy(np.stack([p.rgb for p in batch])) * self.opts.scale)

    yield Toy
    EXTRACTORS.remove("toy")


def test_a_registered_toy_is_a_member_with_its_own_flags(
    toy: type[FeatureExtractor], demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "build",
        "--category",
        CATEGORY,
        "--data-root",
        str(demo_root),
        "--banks",
        str(tmp_path),
        "--quiet",
    ]
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert "--toy.scale" in capsys.readouterr().out
    assert (
        main([*argv, "--method", "toy/fpfh", "--toy.scale", "2.5", "--fpfh.window", "6", "--no-evaluate"])
        == 0
    )
    m = bankfmt.read_manifest(tmp_path / CATEGORY / "v0001")
    assert m.method == "toy/fpfh" and [mb.name for mb in m.members] == ["toy", "fpfh"]
    assert m.members[0].features.options == {"scale": 2.5} and m.members[0].features.dim == 3
    assert m.members[1].features.options["window"] == 6 and m.members[0].weights.kind == "none"

    scorer = load_scorer(tmp_path, CATEGORY)  # the toy is rebuilt from the registry by its recorded spec
    ref = list_samples(demo_root, CATEGORY, "test")[0]
    (p,) = predict(scorer, [Sample.from_ref(ref)])
    assert np.isfinite(p.image_score) and p.map224.shape == (224, 224)

    assert main([*argv, "--method", "toy/fpfh", "--toy.scale", "-1"]) == 2
    assert capsys.readouterr().err.strip().endswith("--toy.scale: Input should be greater than 0")
    assert main([*argv, "--method", "fpfh", "--toy.scale", "2"]) == 2
    assert "--toy.scale: toy is not part of fpfh" in capsys.readouterr().err
