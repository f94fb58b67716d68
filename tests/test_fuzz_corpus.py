from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from fuzz.run import CORPUS, TARGETS

CASES = [
    (target, path)
    for target in sorted(TARGETS)
    for path in sorted((CORPUS / target).iterdir())
    if path.is_file()
]


def test_every_target_has_a_saved_corpus() -> None:
    assert {target for target, _ in CASES} == set(TARGETS)


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_saved_fuzz_input_raises_nothing_unexpected_when_replayed(target: str, path: Path) -> None:
    importlib.import_module(f"fuzz.{target}").one_input(path.read_bytes())
