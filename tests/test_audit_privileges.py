from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from psycopg import errors, sql

from bot import agents, audit
from bot.app import Options, create_app
from bot.settings import load_settings
from handlers.agent_api import RUNTIME
from storage import migrate, privileges
from storage.db import create_db_engine
from storage.tables import AuditEvent
from tests.conftest import PG_URL, FrozenClock, make_env, write_config

ROOT = Path(__file__).resolve().parents[1]


def countersign(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "COUNTERSIGN_"))}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env=inherited | {"COUNTERSIGN_DATABASE_URL": database_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def as_user(role: str, schema: str) -> str:
    """PG_URL with another user (trust auth) and the test schema first on the search_path."""
    parts = urlsplit(PG_URL)
    netloc = f"{role}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc, query=f"options=-csearch_path%3D{schema}"))


def superuser(statement: sql.Composed) -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture
def schema() -> Iterator[str]:
    name = "t_" + secrets.token_hex(6)
    superuser(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    superuser(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def make_role(schema: str) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(*memberships: str) -> str:
        role = "cs_app_" + secrets.token_hex(4)
        superuser(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        made.append(role)
        for group in memberships:
            superuser(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(role)))
        return role

    yield make
    for role in made:
        superuser(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        superuser(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def owner_url(schema: str) -> str:
    url = as_user(urlsplit(PG_URL).username or "postgres", schema)
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


def test_audit_table_name_is_the_one_the_grants_protect() -> None:
    assert AuditEvent.__tablename__ == privileges.AUDIT_TABLE


async def test_app_role_runs_the_server_but_cannot_change_the_audit_log_when_granted(
    owner_url: str, schema: str, make_role: Callable[..., str], tmp_path: Path, clock: FrozenClock
) -> None:
    role = make_role()
    granted = countersign(owner_url, "db", "grant-app-role", role)
    assert granted.returncode == 0, granted.stderr
    assert role in granted.stdout and "audit_event only SELECT and INSERT" in granted.stdout

    app_url = as_user(role, schema)
    # What `serve` does first: with the migrations current, `db upgrade` is a no-op for the app role.
    upgraded = countersign(app_url, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr

    app = create_app(
        load_settings(make_env(app_url, write_config(tmp_path))), Options(clock=clock, run_workers=False)
    )
    rt = app[RUNTIME]
    token = agents.add(rt, name="support-bot", categories=["reply"], callback_prefixes=[]).token
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/v1/drafts",
            json={"category": "reply", "summary": "Where is my order?", "body": "It ships today."},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status == 202, await response.text()
        draft_id = (await response.json())["id"]
        response = await client.delete(f"/v1/drafts/{draft_id}", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200, await response.text()

    with psycopg.connect(app_url, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM audit_event").fetchone()
        assert rows is not None and rows[0] >= 3  # agent added, draft submitted, draft cancelled
        for statement in (
            "UPDATE audit_event SET actor = 'someone else' WHERE seq = 1",
            "DELETE FROM audit_event WHERE seq = 1",
            "TRUNCATE audit_event",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM alembic_version")

    result = audit.verify(rt.engine)
    assert result.ok and result.rows == rows[0]
    rt.engine.dispose()


def test_grant_app_role_changes_nothing_and_exits_2_when_the_role_would_keep_update_on_the_audit_log(
    owner_url: str, schema: str, make_role: Callable[..., str]
) -> None:
    owner = urlsplit(PG_URL).username or "postgres"
    role = make_role(owner)  # a member of the owner inherits the owner's privileges
    done = countersign(owner_url, "db", "grant-app-role", role)
    assert done.returncode == 2
    assert "nothing was changed" in done.stderr
    assert "could still DELETE, TRUNCATE, UPDATE audit_event" in done.stderr
    with psycopg.connect(PG_URL) as conn:
        grants = conn.execute(
            "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = %s", (role,)
        ).fetchone()
        schema_acl = conn.execute(
            "SELECT nspacl::text FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
    assert grants == (0,)
    assert schema_acl is not None and role not in (schema_acl[0] or "")


@pytest.mark.parametrize("role", ["x; DROP TABLE audit_event", 'app"role', "App", "", "a" * 64])
def test_grant_app_role_exits_2_when_the_role_name_is_not_a_plain_identifier(
    owner_url: str, role: str
) -> None:
    done = countersign(owner_url, "db", "grant-app-role", role)
    assert done.returncode == 2
    assert "not a plain role name" in done.stderr


def test_grant_app_role_exits_2_naming_the_role_when_it_does_not_exist(owner_url: str) -> None:
    done = countersign(owner_url, "db", "grant-app-role", "cs_nobody_here")
    assert done.returncode == 2
    assert "no role named 'cs_nobody_here'" in done.stderr


def test_grant_app_role_exits_2_pointing_to_the_hash_chain_on_sqlite(tmp_path: Path) -> None:
    done = countersign(f"sqlite:///{tmp_path / 'countersign.db'}", "db", "grant-app-role", "app")
    assert done.returncode == 2
    assert "SQLite has no roles" in done.stderr and "audit verify" in done.stderr
