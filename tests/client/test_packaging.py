from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib.metadata as metadata, importlib.util, json, sys
import countersign_client
dist = metadata.distribution("countersign-client")
print(json.dumps({
    "files": sorted(str(f) for f in dist.files or []),
    "requires": dist.requires,
    "server": [name for name in ("bot", "handlers", "storage") if importlib.util.find_spec(name)],
    "client": countersign_client.__file__,
}))
"""


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_pip_install_of_the_client_installs_nothing_of_the_server(tmp_path: Path) -> None:
    source = tmp_path / "client"
    shutil.copytree(
        ROOT / "client", source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build")
    )
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip()
    )
    before = {p.name for p in site.iterdir()}
    run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", source, cwd=tmp_path)
    added = {p.name for p in site.iterdir()} - before
    packages = {name for name in added if not name.endswith((".dist-info", ".py", "__pycache__"))}
    assert "countersign_client" in packages and "httpx" in packages
    server = {"bot", "handlers", "storage", "countersign", "aiohttp", "sqlmodel", "sqlalchemy", "slack_bolt"}
    assert not packages & (server | {"slack_sdk", "psycopg", "typer", "anthropic", "alembic"}), packages

    probe = json.loads(run(python, "-c", PROBE, cwd=tmp_path))
    assert probe["server"] == []
    assert probe["client"].startswith(str(site))
    assert [r.split(">")[0].split("<")[0] for r in probe["requires"]] == ["httpx"]
    assert all(f.startswith(("countersign_client", "countersign_client-")) for f in probe["files"])
