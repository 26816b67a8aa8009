"""Shared fixtures: one tiny synthetic dataset per test run (real files), written by the demo generator."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from patchbank_synthetic.demo_data import generate

CATEGORY = "puck"
OTHER = "bracket"


@pytest.fixture(scope="session", autouse=True)
def _quiet_libraries() -> None:
    logging.getLogger("faiss").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Non-square (160 x 120) demo categories: 6 train, 4 validation, 1 test sample per kind."""
    root = tmp_path_factory.mktemp("data")
    generate(
        root, [CATEGORY, OTHER], n_train=6, n_validation=4, n_test=1, size=(160, 120), seed=0, progress=False
    )
    return root
