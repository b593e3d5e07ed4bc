"""Scheduler tests: a migrated CRM on each backend as the process's database, providers aimed at the sandbox."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.conftest import migrate_and_seed


@pytest.fixture(params=["sqlite", "postgres"])
def outbox_db(request: pytest.FixtureRequest, sandbox: Any, process_settings: Callable[..., None]) -> str:
    """A migrated CRM on each backend as the process's database, providers aimed at the sandbox."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    migrate_and_seed(url, days=1)
    # no template configured: a closed window falls back to SMS
    process_settings(DATABASE_URL=url, SANDBOX_URL=sandbox.url, WECHAT_TEMPLATE_ID="")
    return url
