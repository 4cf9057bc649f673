"""Versioned schema migrations: ``sql/<engine>/NNNN_name.sql``, applied in name order, once."""

from __future__ import annotations

import os
from pathlib import Path

SQL_DIR = Path(os.environ.get("CHATD_SQL_DIR", Path(__file__).resolve().parent.parent / "sql"))


def migration_files(engine: str) -> list[tuple[str, str]]:
    """``(name, sql)`` for every migration of ``engine``, oldest first."""
    folder = SQL_DIR / engine
    if not folder.is_dir():
        raise FileNotFoundError(f"no migrations for {engine} in {folder}")
    return [(path.stem, path.read_text()) for path in sorted(folder.glob("*.sql"))]


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file (they never contain ';' inside literals)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]
