"""Fixtures of the applications' tests: one FPFH bank per test run, built by build-bank's library call."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchbank.coreset import CoresetSpec
from patchbank_builder.build import BuildRequest, BuildResult, build_bank
from tests.conftest import CATEGORY


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
