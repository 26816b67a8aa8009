"""Shared fixtures: one tiny synthetic dataset and one FPFH bank per test run (real files, real FAISS)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bank_builder.build import BuildRequest, BuildResult, build_bank
from bank_builder.demo_data import generate
from patchbank.coreset import CoresetSpec

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


@pytest.fixture(scope="session")
def fpfh_build(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildResult]:
    """An FPFH bank of the demo category, evaluated on its test split."""
    banks = tmp_path_factory.mktemp("banks")
    req = BuildRequest(
        category=CATEGORY,
        data_root=demo_root,
        banks=banks,
        method="fpfh",
        coreset=CoresetSpec(ratio=0.1, seed=0),
        progress=False,
    )
    return banks, build_bank(req)
