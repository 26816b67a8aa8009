"""Recall statistics: each part decided OK recalls the bank vectors its patches matched, once each."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from patchbank.recall import RecallStats, merged_files, stats_dir


def test_a_part_recalls_each_matched_vector_once_and_unsearched_patches_none() -> None:
    stats = RecallStats.empty([5, 3])
    stats.record([np.array([0, 0, 2, -1, 2]), np.array([1, -1])], at=100.0)
    stats.record([np.array([2, 4]), np.array([-1, -1])], at=50.0)  # an older part, recorded late
    assert stats.counts[0].tolist() == [1, 0, 2, 0, 1] and stats.counts[1].tolist() == [0, 1, 0]
    assert stats.last[0].tolist() == [100.0, 0.0, 100.0, 0.0, 50.0]  # the latest time is kept
    with pytest.raises(ValueError, match="out of range"):
        stats.record([np.array([5]), np.array([0])], at=1.0)
    with pytest.raises(ValueError, match="members"):
        stats.record([np.array([0])], at=1.0)


def test_merged_replicas_sum_recalls_and_keep_the_latest_time(tmp_path: Path) -> None:
    a, b = RecallStats.empty([4]), RecallStats.empty([4])
    a.record([np.array([0, 1])], at=10.0)
    b.record([np.array([1, 3])], at=20.0)
    folder = stats_dir(tmp_path, "puck", "v0001")
    a.save(folder / "replica-a.npz")
    b.save(folder / "replica-b.npz")
    merged = merged_files(tmp_path, "puck", "v0001", [4])
    assert merged.counts[0].tolist() == [1, 2, 0, 1] and merged.last[0].tolist() == [10.0, 20.0, 0.0, 20.0]
    assert merged_files(tmp_path, "puck", "v0002", [4]).counts[0].tolist() == [0, 0, 0, 0]  # none yet
    with pytest.raises(ValueError, match="sizes"):
        RecallStats.load(folder / "replica-a.npz", [5])  # another bank's file


def test_retention_halves_in_a_half_life_and_each_recall_slows_the_fading() -> None:
    stats = RecallStats.empty([3])
    stats.record([np.array([1, 2])], at=1000.0)
    stats.record([np.array([2])], at=1000.0)  # vector 2: recalled twice
    day = 86400.0
    r = stats.retention(now=1000.0 + day, half_life_s=day, built_at=0.0)[0]
    assert r[1] == pytest.approx(0.5**0.5)  # recalled once: strength 2, half left after 2 half-lives
    assert r[2] == pytest.approx(math.exp(-math.log(2) / 3))  # recalled twice: S = 3
    assert r[0] == pytest.approx(0.5 ** ((1000.0 + day) / day))  # never recalled: ages from the build
    assert r[0] < r[1] < r[2] <= 1.0


def test_summary_says_how_much_is_recalled_and_how_long_ago() -> None:
    stats = RecallStats.empty([4, 2])
    empty = stats.summary(now=10.0)
    assert empty.recalled == 0 and empty.recalled_fraction == 0.0 and empty.age_s[0.5] is None
    stats.record([np.array([0, 1]), np.array([1])], at=4.0)
    stats.record([np.array([1]), np.array([-1])], at=8.0)
    s = stats.summary(now=10.0)
    assert (s.vectors, s.recalled, s.recalls) == (6, 3, 4)
    assert s.recalled_fraction == pytest.approx(0.5) and s.age_s[1.0] == pytest.approx(6.0)
