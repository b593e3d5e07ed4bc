"""One SQLAlchemy engine and session factory per process, and the migration command.

SQLite (a file under var/) is the embedded default; DATABASE_URL switches to PostgreSQL.
`python -m bot.db upgrade` applies the Alembic migrations.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator, Optional

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from bot.config import PROJECT_ROOT, get_settings


def make_engine(url: str, **options: Any) -> Engine:
    """Create an engine with the settings each backend needs for concurrent writers.

    SQLite: a pool of connections (SQLAlchemy 1.4 would open a new one per session), WAL so readers never
    block the writer, and synchronous=NORMAL, which survives a process crash (a power cut may lose the last
    commits; production runs on PostgreSQL). PostgreSQL: pool_pre_ping, so a server restart costs one
    reconnect instead of an error to the patient.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            poolclass=QueuePool,
            pool_size=5,
            max_overflow=10,
            connect_args={"check_same_thread": False, "timeout": 30},
            **options,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, **{"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20, **options})


@lru_cache(maxsize=None)
def get_engine(url: Optional[str] = None) -> Engine:
    return make_engine(url or get_settings().database_url, future=True)


@lru_cache(maxsize=None)
def get_session_factory(url: Optional[str] = None) -> sessionmaker:
    return sessionmaker(bind=get_engine(url), future=True, expire_on_commit=False)


@contextmanager
def session_scope(url: Optional[str] = None) -> Iterator[Session]:
    """A transaction: committed when the block ends, rolled back if it raises."""
    session: Session = get_session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: Optional[str] = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config(str(PROJECT_ROOT / "bot" / "migrations" / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "bot" / "migrations"))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return cfg


def upgrade(url: Optional[str] = None, revision: str = "head") -> None:
    """Apply migrations up to `revision` (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.db", description="CRM database migrations")
    parser.add_argument("command", choices=["upgrade", "downgrade", "current"])
    parser.add_argument("revision", nargs="?", default=None)
    args = parser.parse_args(argv)
    from alembic import command

    cfg = alembic_config()
    if args.command == "upgrade":
        command.upgrade(cfg, args.revision or "head")
    elif args.command == "downgrade":
        command.downgrade(cfg, args.revision or "-1")
    else:
        command.current(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
