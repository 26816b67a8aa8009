"""The bank's record of its clouds' scale, and the check that refuses a cloud in another unit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchbank.data import list_samples
from patchbank.errors import InputError
from patchbank.units import check_scale, dataset_scale, likely_unit, measure, scale_of
from tests.conftest import CATEGORY


def grid_cloud(depth: float = 0.5, spacing: float = 0.002, height: int = 30, width: int = 40) -> np.ndarray:
    """A fronto-parallel plane: points ``spacing`` apart at ``depth``, one row missing."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    xyz = np.stack([(u + 1) * spacing, (v + 1) * spacing, np.full(u.shape, depth)], axis=-1)
    xyz[5] = 0.0
    return xyz.astype(np.float32)


def test_measure_and_scale_of_several_clouds() -> None:
    depth, spacing = measure(grid_cloud())  # type: ignore[misc]
    assert depth == pytest.approx(0.5) and spacing == pytest.approx(0.002)
    scale = scale_of([grid_cloud(0.4), grid_cloud(0.5), grid_cloud(0.9), np.zeros((4, 4, 3), np.float32)])
    assert scale is not None and scale.n_clouds == 3 and scale.median_depth == pytest.approx(0.5)
    assert scale_of([np.zeros((4, 4, 3), np.float32)]) is None


def test_a_cloud_in_another_unit_is_refused_with_the_likely_unit() -> None:
    bank = scale_of([grid_cloud()])
    assert bank is not None
    with pytest.raises(
        InputError,
        match=r"^xyz looks like millimetres \(median depth 500 vs the bank's 0\.5 m\): send xyz_unit=mm$",
    ):
        check_scale(grid_cloud(500.0, 2.0), bank, "xyz")
    with pytest.raises(InputError, match=r"looks like micrometres .*send xyz_unit=um"):
        check_scale(grid_cloud(5e5, 2e3), bank, "xyz")
    with pytest.raises(
        InputError,
        match=r"its median depth is 50 read as metres.*\(100 times\): send xyz_unit \(m, mm or um\)",
    ):
        check_scale(grid_cloud(50.0, 0.2), bank, "xyz")
    with pytest.raises(InputError, match=r"its median depth is 0\.0005 read as metres.*\(0\.001 times\)"):
        check_scale(grid_cloud(5e-4, 2e-6), bank, "xyz")


def test_what_is_not_off_passes() -> None:
    bank = scale_of([grid_cloud()])
    assert bank is not None
    check_scale(grid_cloud(2.0, 0.01), bank, "xyz")  # 4 to 5 times: another stand-off, same unit
    check_scale(grid_cloud(0.5, 0.002, height=600, width=800), bank, "xyz")  # another resolution
    check_scale(grid_cloud(1e-3, 0.002), bank, "xyz")  # z near 0 (a table frame): the spacing agrees
    flat_bank = scale_of([grid_cloud(1e-3, 0.002)])
    assert flat_bank is not None
    check_scale(grid_cloud(0.5, 0.002), flat_bank, "xyz")


def test_likely_unit() -> None:
    assert likely_unit(1000) == "mm" and likely_unit(400) == "mm" and likely_unit(2e6) == "um"
    assert likely_unit(50) is None and likely_unit(3e4) is None


def test_dataset_scale_measures_evenly_spaced_clouds(demo_root: Path) -> None:
    refs = list_samples(demo_root, CATEGORY, "train")
    assert dataset_scale(refs).n_clouds == len(refs)  # type: ignore[union-attr]
    assert dataset_scale(refs, limit=2).n_clouds == 2  # type: ignore[union-attr]
    assert dataset_scale(refs).median_depth == pytest.approx(0.5, abs=0.02)  # type: ignore[union-attr]
