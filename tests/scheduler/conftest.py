"""Scheduler tests: a migrated CRM on each backend as the process's database, providers aimed at the sandbox."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.conftest import migrate_and_seed


@pytest.fixture(params=["sqlite", "postgres"])
def outbox_db(request: pytest.FixtureRequest, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated CRM on each backend as the process's database, providers aimed at the sandbox."""
    from bot import config, db, kv
    from bot.outbound import providers, settings

    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    migrate_and_seed(url, days=1)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("SANDBOX_URL", sandbox.url)
    monkeypatch.setenv("WECHAT_TEMPLATE_ID", "")  # no template configured: a closed window falls back to SMS
    caches = (config.get_settings, db.get_engine, db.get_session_factory, settings.get_provider_settings, kv.get_store)
    for cached in caches:
        cached.cache_clear()
    providers._default = None
    yield url
    for cached in caches:
        cached.cache_clear()
    providers._default = None
