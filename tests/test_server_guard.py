from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_env, write_config
from tests.processes import ServerProcess


def test_serve_refuses_to_share_a_sqlite_file_with_a_live_server(tmp_path: Path) -> None:
    env = os.environ | make_env(f"sqlite:///{tmp_path / 'one.db'}", write_config(tmp_path))
    env["COUNTERSIGN_ALLOW_SHARED_SQLITE"] = "0"
    first = ServerProcess("first", env, tmp_path / "first.log").start()
    try:
        second = subprocess.run(
            [sys.executable, "-m", "bot", "serve", "--port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2
        assert "another countersign server is using" in second.stderr and "PostgreSQL" in second.stderr
    finally:
        first.stop()
    third = ServerProcess("third", env, tmp_path / "third.log").start()
    third.stop()


@pytest.mark.parametrize("spelling", ["symlink", "query", "relative"])
def test_another_spelling_of_the_same_sqlite_file_is_refused_too(tmp_path: Path, spelling: str) -> None:
    env = os.environ | make_env(f"sqlite:///{tmp_path / 'one.db'}", write_config(tmp_path))
    env["COUNTERSIGN_ALLOW_SHARED_SQLITE"] = "0"
    first = ServerProcess("first", env, tmp_path / "first.log").start()
    try:
        (tmp_path / "link.db").symlink_to(tmp_path / "one.db")
        url = {
            "symlink": f"sqlite:///{tmp_path / 'link.db'}",
            "query": f"sqlite:///{tmp_path / 'one.db'}?timeout=5",
            "relative": "sqlite:///one.db",
        }[spelling]
        second = subprocess.run(
            [sys.executable, "-m", "bot", "serve", "--port", "0"],
            env=env | {"COUNTERSIGN_DATABASE_URL": url},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        assert "another countersign server is using" in second.stderr
    finally:
        first.stop()
