"""Settings read once from the environment, with embedded defaults a newcomer can run as they are."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from zoneinfo import ZoneInfo

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
VAR_DIR = PROJECT_ROOT / "var"


@dataclass(frozen=True)
class Settings:
    """Where the CRM lives and which hospital this deployment serves."""

    database_url: str
    tracker_database_url: str
    timezone: str
    hospital_file: Path
    locale: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _default_sqlite_url(name: str) -> str:
    VAR_DIR.mkdir(exist_ok=True)
    return f"sqlite:///{VAR_DIR / name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read settings from the environment (cached: one set per process)."""
    database_url = os.environ.get("DATABASE_URL") or _default_sqlite_url("crm.sqlite")
    tracker_url = (
        os.environ.get("TRACKER_DATABASE_URL")
        or (database_url if not database_url.startswith("sqlite") else None)
        or _default_sqlite_url("tracker.sqlite")
    )
    return Settings(
        database_url=database_url,
        tracker_database_url=tracker_url,
        timezone=os.environ.get("HOSPITAL_TIMEZONE", "Asia/Shanghai"),
        hospital_file=Path(os.environ.get("HOSPITAL_FILE", DATA_DIR / "hospital" / "hospital.yml")),
        locale=os.environ.get("HOSPITAL_LOCALE", "zh_CN"),
    )
