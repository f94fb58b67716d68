"""Migrations carry an existing database forward with its rows, and back (both databases)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from storage import migrate
from storage.db import create_db_engine

USAGE = {"scope": "category:refund", "day": "2026-11-24", "count_used": 3, "amount_used_minor": 9000}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url, pool_size=1)
    yield engine
    engine.dispose()


def _alembic(engine: Engine, verb: str, revision: str) -> None:
    config = migrate.alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, verb)(config, revision)


def test_0002_keeps_todays_usage_and_then_holds_it_to_the_caps(engine: Engine) -> None:
    _alembic(engine, "upgrade", "0001")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO cap_usage (scope, day, count_used, amount_used_minor, alerted_80, alerted_100)"
                " VALUES (:scope, :day, :count_used, :amount_used_minor, false, false)"
            ),
            USAGE,
        )
    migrate.upgrade(engine)
    assert migrate.is_current(engine)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT count_used, amount_used_minor, count_cap, amount_cap_minor FROM cap_usage")
        )
        assert [tuple(r) for r in row] == [(3, 9000, None, None)]
    # Usage taken before the upgrade has no recorded cap; the first reservation after it records one.
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE cap_usage SET count_cap = 2"))

    _alembic(engine, "downgrade", "0001")
    with engine.connect() as conn:
        assert [
            tuple(r) for r in conn.execute(sa.text("SELECT count_used, amount_used_minor FROM cap_usage"))
        ] == [(3, 9000)]


def test_0006_drops_the_unused_event_table_and_its_downgrade_brings_it_back(engine: Engine) -> None:
    _alembic(engine, "upgrade", "0005")
    assert "slack_event_seen" in sa.inspect(engine).get_table_names()
    migrate.upgrade(engine)
    assert migrate.is_current(engine)
    assert "slack_event_seen" not in sa.inspect(engine).get_table_names()
    _alembic(engine, "downgrade", "0005")
    assert "slack_event_seen" in sa.inspect(engine).get_table_names()


def test_0007_records_the_logs_head_as_it_was(engine: Engine) -> None:
    _alembic(engine, "upgrade", "0006")
    with engine.begin() as conn:
        for seq, digest in ((1, "a" * 64), (2, "b" * 64)):
            conn.execute(
                sa.text(
                    "INSERT INTO audit_event (seq, at, actor, action, subject, before, after, outcome, prev_hash, hash)"
                    " VALUES (:seq, :at, 'a', 'x', 's', 'null', 'null', 'ok', :prev, :hash)"
                ),
                {"seq": seq, "at": "2026-11-24 15:00:00.000000", "prev": "0" * 64, "hash": digest},
            )
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id, seq, hash FROM audit_head")).all() == [(1, 2, "b" * 64)]
    _alembic(engine, "downgrade", "0006")
    assert "audit_head" not in sa.inspect(engine).get_table_names()
