"""Converting an Eyecandies root to the MVTec 3D-AD layout: what lands where, read back by the dataset reader
the banks use; resuming; resizing against torch's nearest rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchbank.data import list_samples, read_mask, read_xyz
from patchbank.errors import DataError, InputError
from patchbank.eyecandies import list_samples as eyecandies_samples
from patchbank.eyecandies import read_sample
from patchbank.eyecandies_convert import ConversionOptions, convert_eyecandies
from patchbank.preprocess import resize_xyz
from patchbank_synthetic.eyecandies import generate

CATEGORY = "GummyBear"
N_TEST = 2


@pytest.fixture(scope="module", params=[1, 2], ids=lambda s: f"seed{s}")
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eyecandies")
    generate(
        root,
        [CATEGORY],
        n_train=2,
        n_validation=1,
        n_test=N_TEST,
        size=(64, 48),
        seed=request.param,
        progress=False,
    )
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_sample_lands_in_its_folder(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "mvtec"
    (done,) = convert_eyecandies(source, out, progress=False)
    assert done.out == out / CATEGORY and done.written == 3 + 2 * N_TEST and done.skipped == 0
    assert done.counts == {"test/bad": N_TEST, "test/good": N_TEST, "train/good": 2, "validation/good": 1}
    originals = {
        (split, ref.index): ref
        for split in ("train", "val", "test_public")
        for ref in eyecandies_samples(source, CATEGORY, split)
    }
    target = {"train": "train", "validation": "val", "test": "test_public"}
    for split in ("train", "validation", "test"):
        for ref in list_samples(out, CATEGORY, split):  # the reader build-bank and evaluate use
            original = read_sample(originals[target[split], int(ref.rgb.stem)])
            assert np.array_equal(read_xyz(ref.xyz), original.xyz)
            assert np.array_equal(np.asarray(Image.open(ref.rgb)), original.rgb)  # image_4, the default
            assert (ref.kind == "bad") == bool(original.gt is not None and original.gt.any())
            if split == "test":
                assert ref.gt is not None and np.array_equal(read_mask(ref, (48, 64)), original.gt > 0)
            else:
                assert ref.gt is None


def test_a_second_run_resumes(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "mvtec"
    convert_eyecandies(source, out, progress=False)
    before = _files(out)
    (again,) = convert_eyecandies(source, out, progress=False)
    assert (again.written, again.skipped) == (0, 3 + 2 * N_TEST)
    assert _files(out) == before
    (out / CATEGORY / "test" / "bad" / "rgb" / "001.png").unlink()  # as if stopped while writing it
    (again,) = convert_eyecandies(source, out, progress=False)
    assert again.written == 1 and _files(out) == before
    with pytest.raises(DataError, match=r"was converted with \{'lighting': 4, .*\}, not \{'lighting': 0"):
        convert_eyecandies(source, out, options=ConversionOptions(lighting=0), progress=False)


def test_resizing_follows_the_banks_nearest_rule(source: Path, tmp_path: Path) -> None:
    convert_eyecandies(source, tmp_path, options=ConversionOptions(size=40, lighting=5), progress=False)
    for ref in list_samples(tmp_path, CATEGORY, "test"):
        original = read_sample(eyecandies_samples(source, CATEGORY, "test_public")[int(ref.rgb.stem)])
        assert np.array_equal(read_xyz(ref.xyz), resize_xyz(original.xyz, 40))  # torch's nearest
        assert Image.open(ref.rgb).size == (40, 40) and Image.open(ref.gt).size == (40, 40)


def test_refusals(source: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs a folder of its own"):
        convert_eyecandies(source, source, progress=False)
    with pytest.raises(DataError, match=r"'Lollipop' not found"):
        convert_eyecandies(source, tmp_path, ["Lollipop"], progress=False)
    lone = tmp_path / "lone" / CATEGORY / "val" / "data"
    lone.mkdir(parents=True)
    with pytest.raises(DataError, match="has no train/data"):
        convert_eyecandies(tmp_path / "lone", tmp_path / "out", progress=False)
