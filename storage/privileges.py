"""PostgreSQL privileges for the role the server runs as: what it needs, and on the audit log only
SELECT and INSERT, so that role cannot rewrite history (`countersign db grant-app-role`).

Run by the owner of the schema after `db upgrade`, and again after an upgrade that adds tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from sqlalchemy.engine import Engine

AUDIT_TABLE = "audit_event"
VERSION_TABLE = "alembic_version"
# A role name as `CREATE ROLE name` spells it unquoted (it is quoted as an identifier anyway).
ROLE_RE = re.compile(r"[a-z_][a-z0-9_$]{0,62}")
CHECKED = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")


class GrantRefused(Exception):
    """Nothing was granted (the transaction was rolled back); the message says why."""


@dataclass(frozen=True)
class Granted:
    role: str
    schema: str
    tables: int


def expected(table: str) -> frozenset[str]:
    """The table privileges the app role ends up with, per table."""
    if table == AUDIT_TABLE:
        return frozenset({"SELECT", "INSERT"})
    if table == VERSION_TABLE:
        return frozenset({"SELECT"})  # the app role reads the revision (readiness) but never migrates
    return frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})


def grant_app_role(engine: Engine, role: str) -> Granted:
    """Grant `role` what the server needs in the current schema, in one transaction.

    USAGE on the schema, SELECT/INSERT/UPDATE/DELETE on every table, USAGE/SELECT on every
    sequence; then UPDATE, DELETE and TRUNCATE on the audit table are revoked (and all but
    SELECT on Alembic's version table). The outcome is read back with has_table_privilege:
    when it is not exactly that (the role is a superuser, an owner or a member of one, or the
    caller does not own the tables so the grants did nothing), everything is rolled back and
    GrantRefused says why.
    """
    if engine.dialect.name != "postgresql":
        raise GrantRefused("roles and grants are a PostgreSQL feature")
    if not ROLE_RE.fullmatch(role):
        raise GrantRefused(
            f"{role!r} is not a plain role name (lower-case letters, digits, _ and $, at most 63)"
        )
    with engine.begin() as connection:
        pg: Any = connection.connection.driver_connection
        with pg.cursor() as cursor:
            cursor.execute("SELECT current_schema(), current_user")
            schema, caller = cursor.fetchone()
            if schema is None:
                raise GrantRefused("no current schema: check the search_path of the database URL")
            if role == caller:
                raise GrantRefused(f"{role!r} is the role running this command; name the app's own role")
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            if cursor.fetchone() is None:
                raise GrantRefused(f"no role named {role!r}: create it first (CREATE ROLE {role} LOGIN …)")
            who, where = sql.Identifier(role), sql.Identifier(schema)
            for statement in (
                "GRANT USAGE ON SCHEMA {schema} TO {role}",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
                "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
                "REVOKE UPDATE, DELETE, TRUNCATE ON TABLE {schema}.{audit} FROM {role}",
            ):
                cursor.execute(
                    sql.SQL(statement).format(schema=where, role=who, audit=sql.Identifier(AUDIT_TABLE))
                )
            cursor.execute(
                "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s", (schema, VERSION_TABLE)
            )
            if cursor.fetchone() is not None:
                cursor.execute(
                    sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLE {}.{} FROM {}").format(
                        where, sql.Identifier(VERSION_TABLE), who
                    )
                )
            held = _table_privileges(cursor, role, schema)
        # Raised inside the transaction, so that a refusal rolls every grant back.
        if AUDIT_TABLE not in held:
            raise GrantRefused(
                f"no {AUDIT_TABLE} table in schema {schema!r}: run `countersign db upgrade` first"
            )
        problems = _problems(held)
        if problems:
            raise GrantRefused(
                f"{role!r} {problems}, so nothing was changed. Run this as the owner of the tables, and make"
                f" {role!r} a plain role (not a superuser, not an owner, not a member of a role that has"
                " these privileges)."
            )
    return Granted(role=role, schema=schema, tables=len(held))


def _problems(held: dict[str, frozenset[str]]) -> str:
    extra = {t: p - expected(t) for t, p in held.items() if p - expected(t)}
    missing = {t: expected(t) - p for t, p in held.items() if expected(t) - p}
    said = []
    if AUDIT_TABLE in extra:
        said.append(f"could still {', '.join(sorted(extra[AUDIT_TABLE]))} {AUDIT_TABLE}")
    elif extra:
        said.append(
            f"could still {', '.join(sorted(set().union(*extra.values())))} {', '.join(sorted(extra))}"
        )
    if missing:
        said.append(
            f"would lack {', '.join(sorted(set().union(*missing.values())))} on {len(missing)} tables"
        )
    return " and ".join(said)


def _table_privileges(cursor: Any, role: str, schema: str) -> dict[str, frozenset[str]]:
    checks = ", ".join(f"has_table_privilege(%(role)s, c.oid, '{p}')" for p in CHECKED)
    cursor.execute(
        f"SELECT c.relname, {checks} FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')",
        {"role": role, "schema": schema},
    )
    return {
        row[0]: frozenset(p for p, ok in zip(CHECKED, row[1:], strict=True) if ok)
        for row in cursor.fetchall()
    }
