"""Late fusion: method names, Shape-Guided alignment, the max and one-class-SVM rules, and fused banks built
end to end (real FAISS, real features; the rgb member is the default: tf_efficientnet_lite0 with the ImageNet
weights the engine installs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from patchbank import bank as bankfmt
from patchbank.data import list_samples
from patchbank.errors import InputError
from patchbank.extract import load_prepared
from patchbank.fusion import Alignment, Fusion, fit_fusion
from patchbank.methods import DEFAULT_METHOD, parse_method
from patchbank.scorer import load_scorer
from patchbank.weights import WeightsRequest
from patchbank_builder.build import BuildRequest, BuildResult, build_bank
from tests.conftest import CATEGORY


def test_method_names() -> None:
    assert parse_method("rgb+fpfh").members == ("rgb+fpfh",) and parse_method("rgb+fpfh").fusion is None
    m = parse_method(" rgb / fpfh ")
    assert (m.name, m.members, m.fusion) == ("rgb/fpfh", ("rgb", "fpfh"), "max")
    assert parse_method("dino/fpfh@svm").fusion == "svm" and parse_method("rgb/fpfh@max").name == "rgb/fpfh"
    assert parse_method(DEFAULT_METHOD).fusion == "max"
    assert not parse_method("fpfh").needs_weights and parse_method("dino/fpfh").needs_weights
    for bad, message in [
        ("rgb/rgb", "names a member twice"),
        ("rgb/", "an empty member"),
        ("hog/fpfh", "hog is not a feature extractor"),
        ("rgb@svm", "two or more members"),
        ("rgb/fpfh@vote", "unknown fusion rule 'vote'"),
    ]:
        with pytest.raises(InputError, match=message):
            parse_method(bad)


def test_alignment_maps_mean_plus_minus_3_std_to_0_and_1() -> None:
    goods = np.random.default_rng(0).normal(40.0, 5.0, size=500)
    a = Alignment.fit(goods)
    mean, std = goods.mean(), goods.std()
    np.testing.assert_allclose(a.apply(np.array([mean - 3 * std, mean, mean + 3 * std])), [0, 0.5, 1])
    assert Alignment.fit(np.full(4, 2.0)).apply(np.array([2.0]))[0] == pytest.approx(0.5)  # zero spread


def _two_modalities(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Held-out goods of two banks on very different scales: rgb ~ N(1, 0.1), fpfh ~ N(300, 40)."""
    image = np.stack([rng.normal(1.0, 0.1, 50), rng.normal(300.0, 40.0, 50)])
    maps = np.stack([rng.normal(1.0, 0.1, (50, 8, 8)), rng.normal(300.0, 40.0, (50, 8, 8))])
    return image, maps


@pytest.mark.parametrize("rule", ["max", "svm"])
def test_fusion_keeps_each_modalitys_strength(rule: str) -> None:
    """A colour-only defect (only the rgb bank sees it) and a shape-only defect (only fpfh) both outscore
    every good part after fusion, although each is ordinary in the other modality; a raw sum would drown
    the rgb defect in fpfh's scale."""
    rng = np.random.default_rng(1)
    image, maps = _two_modalities(rng)
    fusion = fit_fusion(rule, image, maps, "validation")  # type: ignore[arg-type]
    goods = fusion.image.apply(image)
    stain = fusion.image.apply(np.array([[1.6], [300.0]]))  # +6 std in rgb, typical in fpfh
    dent = fusion.image.apply(np.array([[1.0], [540.0]]))  # +6 std in fpfh, typical in rgb
    assert stain[0] > goods.max() and dent[0] > goods.max()
    assert (image.sum(axis=0) > 301.6).mean() > 0.3  # the raw sum would call many goods worse than the stain
    if rule == "max":
        rgb = fusion.image.alignments[0]
        assert stain[0] == pytest.approx((1.6 - rgb.low) / (rgb.high - rgb.low), rel=1e-6)
        assert fusion.image.svm is None
        aligned = [a.apply(s) for a, s in zip(fusion.pixel.alignments, maps, strict=True)]
        np.testing.assert_allclose(fusion.pixel.apply(maps), np.maximum(*aligned), rtol=1e-6)
    else:
        assert fusion.image.svm is not None and all(c > 0 for c in fusion.image.svm.coef)
        assert fusion.pixel.svm is not None and len(fusion.pixel.svm.coef) == 2


def test_fusion_is_json_and_deterministic() -> None:
    image, maps = _two_modalities(np.random.default_rng(2))
    a = fit_fusion("svm", image, maps, "validation", seed=3)
    b = fit_fusion("svm", image, maps, "validation", seed=3)
    assert a == b and Fusion.model_validate_json(a.model_dump_json()) == a
    with pytest.raises(ValueError, match="2\\+ members"):
        fit_fusion("max", image[:1], maps[:1], "validation")


@pytest.fixture(scope="module")
def fused_build(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildResult]:
    banks = tmp_path_factory.mktemp("fused-banks")
    req = BuildRequest(
        category=CATEGORY,
        data_root=demo_root,
        banks=banks,
        method="rgb/fpfh",
        progress=False,
    )
    return banks, build_bank(req)


def test_a_fused_bank_keeps_one_index_per_member(fused_build: tuple[Path, BuildResult]) -> None:
    banks, result = fused_build
    m = result.manifest
    assert m.method == "rgb/fpfh" and [mb.name for mb in m.members] == ["rgb", "fpfh"]
    assert [mb.index_file for mb in m.members] == ["index0.faiss", "index1.faiss"]
    assert set(m.files) == {"index0.faiss", "index1.faiss"}
    assert [mb.features.dim for mb in m.members] == [152, 33]
    assert (
        m.fusion is not None and m.fusion.rule == "max" and (m.fusion.source, m.fusion.n) == ("validation", 4)
    )
    for member, alignment in zip(m.members, m.fusion.image.alignments, strict=True):
        assert member.held_out is not None
        assert alignment == Alignment.fit(np.asarray(member.held_out.image_scores))
    loaded = bankfmt.load_bank(banks, CATEGORY)
    assert [ix.dim for ix in loaded.indices] == [152, 33]


def test_fused_scores_are_the_aligned_maximum_of_the_members(
    fused_build: tuple[Path, BuildResult], demo_root: Path
) -> None:
    """Scoring a loaded fused bank reproduces the build's evaluation, and equals the manifest's alignment
    applied to each member's raw scores, then the maximum."""
    banks, result = fused_build
    scorer = load_scorer(banks, CATEGORY)
    refs = list_samples(demo_root, CATEGORY, "test")
    prepared = [load_prepared(r, 224) for r in refs]
    feats, keep = scorer.features_and_parts(prepared)
    assert keep is not None and scorer.scoring.image_rule == "map-max"  # the product's rule
    fused = scorer.score_features(feats, keep)
    members = scorer.member_scores(feats, keep)
    fusion = scorer.bank.manifest.fusion
    assert fusion is not None
    expected = np.maximum(*(a.apply(m.image) for a, m in zip(fusion.image.alignments, members, strict=True)))
    np.testing.assert_allclose(fused.image, expected, rtol=1e-6)
    expected_maps = np.maximum(
        *(a.apply(m.maps) for a, m in zip(fusion.pixel.alignments, members, strict=True))
    )
    np.testing.assert_allclose(fused.maps, expected_maps, rtol=1e-5, atol=1e-6)
    assert result.evaluation is not None
    np.testing.assert_allclose(fused.image, [s.image_score for s in result.evaluation.scores], rtol=1e-5)


def test_without_validation_the_fusion_is_fitted_leave_one_out(demo_root: Path, tmp_path: Path) -> None:
    """No validation/good: each training sample is scored with its own patches excluded, in every member."""
    data = tmp_path / "data"
    shutil.copytree(demo_root / CATEGORY, data / CATEGORY, ignore=shutil.ignore_patterns("validation"))
    req = BuildRequest(
        category=CATEGORY,
        data_root=data,
        banks=tmp_path / "banks",
        method="rgb/fpfh@svm",
        evaluate=False,
        progress=False,
    )
    m = build_bank(req).manifest
    assert m.method == "rgb/fpfh@svm" and m.fusion is not None and m.fusion.image.svm is not None
    assert (m.fusion.source, m.fusion.n, m.score_stats.n) == ("train-leave-one-out", 6, 6)
    assert all(min(mb.held_out.image_scores) > 0 for mb in m.members if mb.held_out)  # own patches excluded
    on_disk = json.loads((tmp_path / "banks" / CATEGORY / m.version / bankfmt.MANIFEST).read_text())
    assert on_disk["fusion"]["image"]["svm"]["coef"] == m.fusion.image.svm.coef


@pytest.mark.slow
def test_dino_in_late_fusion_with_fpfh(demo_root: Path, tmp_path: Path) -> None:
    """dino/fpfh end to end; the ViT-B/8 is randomly initialised on purpose (no DINO weights here)."""
    req = BuildRequest(
        category=CATEGORY,
        data_root=demo_root,
        banks=tmp_path,
        method="dino/fpfh",
        weights=WeightsRequest.random(0),
        evaluate=False,
        progress=False,
    )
    m = build_bank(req).manifest
    assert [(mb.name, mb.features.dim) for mb in m.members] == [("dino", 768), ("fpfh", 33)]
    assert m.members[0].weights.kind == "random" and m.fusion is not None and m.fusion.rule == "max"
    scorer = load_scorer(tmp_path, CATEGORY)
    ref = list_samples(demo_root, CATEGORY, "test", kinds=["hole"])[0]
    scores = scorer.score([load_prepared(ref, 224)])
    assert scores.maps.shape == (1, 224, 224) and np.isfinite(scores.image).all()
