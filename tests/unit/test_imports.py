"""The house's import rules, read from the source (every import statement, including lazy ones inside
functions), so a shortcut across the layers fails here rather than in review:

- ``patchbank`` (the library) imports none of the apps;
- the offline side (``bank_builder/``) and the online side (``service/``) never import each other, the
  benchmarks or the demo-data generators (they meet in the bank format, which lives in ``patchbank``);
- ``clients/`` imports nothing of ours (a line PC installs it without the engine);
- ``synthetic/`` imports only the library; nothing imports the benchmarks or ``tests``;
- every import uses the installed names (``patchbank_service``...), never a folder's name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {
    "patchbank",
    "patchbank_builder",
    "patchbank_service",
    "patchbank_client",
    "patchbank_synthetic",
    "patchbank_benchmarks",
}
FOLDER_NAMES = {"bank_builder", "service", "clients", "synthetic", "benchmarks", "tests"}
ALLOWED = {  # folder -> our packages its code may import (besides its own)
    "patchbank": {"patchbank"},
    "bank_builder": {"patchbank", "patchbank_builder"},
    "service": {"patchbank", "patchbank_service"},
    "clients": {"patchbank_client"},
    "synthetic": {"patchbank", "patchbank_synthetic"},
    "benchmarks": OURS,
}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports (absolute imports, wherever they stand)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_layer_imports_only_what_it_may(folder: str) -> None:
    files = sources(folder)
    assert files, f"no sources under {folder}/"
    bad = {}
    for path in files:
        ours = imported_modules(path) & (OURS | FOLDER_NAMES)
        if ours - ALLOWED[folder]:
            bad[str(path.relative_to(ROOT))] = sorted(ours - ALLOWED[folder])
    assert not bad, f"imports across the layers: {bad}"


def test_the_rules_catch_a_crossing(tmp_path: Path) -> None:
    """The checker itself: lazy imports inside functions, and folder names, are seen."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from patchbank_service.app import create_app\n    import tests.live\n")
    assert imported_modules(bad) == {"patchbank_service", "tests"}


def test_tests_of_the_library_need_no_app() -> None:
    """The library's own tests (tests/unit) build their banks from library parts only."""
    bad = {
        p.name: sorted(imported_modules(p) & (OURS - {"patchbank", "patchbank_synthetic"}))
        for p in sources("tests/unit")
    }
    assert not {k: v for k, v in bad.items() if v}
