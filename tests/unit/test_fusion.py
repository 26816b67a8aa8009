"""Late fusion's fit refuses what it cannot align with a product error (exit 2 / a 4xx), not a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from patchbank.errors import DataError
from patchbank.fusion import fit_fusion


def test_one_held_out_good_is_a_data_error_naming_the_fix() -> None:
    image = np.array([[1.0], [2.0]])  # (members, held-out goods): one good
    maps = np.zeros((2, 1, 4, 4))
    with pytest.raises(DataError, match=r"2 or more held-out good samples.*got 1.*validation/good"):
        fit_fusion("max", image, maps, "validation/good")


def test_two_held_out_goods_fit() -> None:
    rng = np.random.default_rng(0)
    fusion = fit_fusion("max", rng.random((2, 2)), rng.random((2, 2, 4, 4)), "validation/good")
    assert fusion.n == 2 and len(fusion.image.alignments) == 2
