"""Scoring rules: which patches are on the part, how background patches are silenced, the map-max image
score, and which rule each method gets."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from patchbank.bank import Manifest
from patchbank.cli import add_model_flags, collect
from patchbank.errors import InputError
from patchbank.features.base import GRID
from patchbank.index import PatchIndex
from patchbank.methods import parse_method
from patchbank.preprocess import Prepared
from patchbank.rules import (
    PRODUCT,
    PUBLISHED,
    ForegroundOptions,
    Scoring,
    foreground_patches,
    mask_background,
    part_mask,
    patch_mask,
)
from patchbank.scorer import score_patches

S = 224


def table_with_part(hole: bool = False) -> np.ndarray:
    """A slightly tilted table 0.5 m away, and a 0.02 m high box on it (columns 80-159, rows 60-179), with a
    hole through the box when asked; metres, organized S x S."""
    v, u = np.mgrid[0:S, 0:S].astype(np.float32)
    x, y = (u - S / 2) * 0.001, (v - S / 2) * 0.001
    z = 0.5 + 0.0002 * u
    box = (u >= 80) & (u < 160) & (v >= 60) & (v < 180)
    z = np.where(box, z - 0.02, z)
    xyz = np.stack([x + 1e-4, y + 1e-4, z], axis=-1).astype(np.float32)  # no exact zeros on the axes
    if hole:
        xyz[110:130, 110:130] = 0.0  # the sensor sees nothing through the hole
    return xyz


def test_the_part_is_what_stands_off_the_table_holes_included() -> None:
    mask = part_mask(table_with_part(hole=True), ForegroundOptions())
    assert mask[60:180, 80:160].mean() > 0.97  # the box, its hole filled
    assert mask[110:130, 110:130].all()
    assert mask[:, :60].sum() == 0 and mask[:, 180:].sum() == 0  # the table on both sides


def test_patch_mask_takes_a_fraction_and_grows_by_whole_patches() -> None:
    mask = np.zeros((S, S), bool)
    mask[0:16, 0:8] = True  # patches (0, 0) and (1, 0), cells of 8 x 8 pixels
    mask[100:102, 100:102] = True  # 4 of 64 pixels of one patch: below a quarter
    tight = patch_mask(mask, GRID, ForegroundOptions(dilate=0)).reshape(GRID, GRID)
    assert np.argwhere(tight).tolist() == [[0, 0], [1, 0]]
    grown = patch_mask(mask, GRID, ForegroundOptions(dilate=1)).reshape(GRID, GRID)
    assert grown[2, 0] and grown[0, 1] and not grown[3, 0] and grown.sum() == 5
    loose = patch_mask(mask, GRID, ForegroundOptions(dilate=0, min_fraction=0.05)).reshape(GRID, GRID)
    assert loose[100 // 8, 100 // 8]


def test_a_sample_with_no_part_scores_every_patch() -> None:
    empty = Prepared(
        rgb=np.zeros((3, S, S), np.float32), xyz=np.zeros((S, S, 3), np.float32), input_size=(S, S)
    )
    part = Prepared(rgb=empty.rgb, xyz=table_with_part(), input_size=(S, S))
    keep = foreground_patches([empty, part], GRID, ForegroundOptions())
    assert keep[0].all() and 0 < keep[1].sum() < GRID * GRID


def test_background_patches_take_the_lowest_score_of_the_part() -> None:
    dists = np.array([[5.0, 1.0, 9.0, 2.0]])
    keep = np.array([[True, True, False, True]])
    assert mask_background(dists, keep).tolist() == [[5.0, 1.0, 1.0, 2.0]]


@pytest.fixture(scope="module")
def index() -> PatchIndex:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    return PatchIndex(vectors, np.arange(200), "flat", "cpu")


def test_an_outlier_off_the_part_neither_scores_nor_lights_the_map(index: PatchIndex) -> None:
    patches = index.vectors[np.arange(GRID * GRID) % 200][None].copy()
    patches[0, 5] += 50.0  # far from every bank vector, in the top row
    keep = np.ones((1, GRID * GRID), bool)
    keep[0, :GRID] = False  # the top row is off the part
    rule = Scoring(image_rule="map-max")
    loud = score_patches(index, patches, scoring=rule)
    quiet = score_patches(index, patches, scoring=rule, keep=keep)
    assert loud.image[0] > 10 and quiet.image[0] < 1e-3
    assert loud.maps[0, :8].max() > 10 and quiet.maps.max() < 1e-3


def test_map_max_is_the_maps_largest_value(index: PatchIndex) -> None:
    patches = index.vectors[np.arange(GRID * GRID) % 200][None].copy()
    patches[0, 400] += 3.0
    scores = score_patches(index, patches, scoring=Scoring(image_rule="map-max"))
    assert scores.image[0] == pytest.approx(float(scores.maps[0].max()))
    btf = score_patches(index, patches)
    assert btf.image[0] != pytest.approx(scores.image[0])  # the published rule differs
    assert np.array_equal(btf.maps, scores.maps)


def test_published_methods_keep_btfs_rule_every_other_the_products() -> None:
    assert parse_method("fpfh").scoring() == PUBLISHED
    assert parse_method("rgb+fpfh").scoring() == PUBLISHED
    assert parse_method("rgb/fpfh").scoring() == PRODUCT
    assert parse_method("rgb").scoring() == PRODUCT
    off = parse_method("rgb/fpfh").scoring({"foreground": None})
    assert off.foreground is None and off.image_rule == "map-max"
    on = parse_method("fpfh").scoring({"foreground": {"min_fraction": 0.5}})
    assert on.foreground == ForegroundOptions(min_fraction=0.5)
    with pytest.raises(InputError, match="scoring options"):
        parse_method("rgb").scoring({"image_rule": "median"})


def test_scoring_flags_switch_the_part_on_and_off() -> None:
    p = argparse.ArgumentParser()
    add_model_flags(p, Scoring, "scoring")
    assert collect(p.parse_args(["--no-scoring.foreground"]), "scoring") == {"foreground": None}
    assert collect(p.parse_args(["--scoring.foreground.dilate", "2"]), "scoring") == {
        "foreground": {"dilate": 2}
    }
    with pytest.raises(InputError, match="switched off"):
        collect(p.parse_args(["--no-scoring.foreground", "--scoring.foreground.dilate", "2"]), "scoring")


def test_a_manifest_without_a_scoring_rule_reads_as_the_published_one(
    library_bank: tuple[Path, Manifest],
) -> None:
    data = library_bank[1].model_dump(mode="json")
    data.pop("scoring")
    assert Manifest.model_validate(data).scoring == PUBLISHED
