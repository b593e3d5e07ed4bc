"""Hospital facts kept in data/hospital/: departments and their aliases, the doctor roster, hospital info.

Read once per process. A hospital edits the YAML files, not this code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

from bot.config import DATA_DIR, get_settings

HOSPITAL_DATA = DATA_DIR / "hospital"


@dataclass(frozen=True)
class DepartmentInfo:
    code: str
    name: str
    location: str
    aliases: Tuple[str, ...]


@dataclass(frozen=True)
class InfoTopic:
    key: str
    keywords: Tuple[str, ...]
    answer: str


def _load_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


@lru_cache(maxsize=1)
def departments() -> Dict[str, DepartmentInfo]:
    raw = _load_yaml(HOSPITAL_DATA / "departments.yml")["departments"]
    return {
        d["code"]: DepartmentInfo(d["code"], d["name"], d.get("location", ""), tuple(d.get("aliases", []))) for d in raw
    }


@lru_cache(maxsize=1)
def _alias_index() -> List[Tuple[str, str]]:
    """(alias, code), longest alias first so that 神经外科 wins over 外科."""
    pairs = []
    for info in departments().values():
        pairs.append((info.name, info.code))
        pairs.append((info.code, info.code))
        pairs.extend((alias, info.code) for alias in info.aliases)
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def find_department(text: Optional[str]) -> Optional[str]:
    """The department code a text names (by code, name or alias), or None."""
    if not text:
        return None
    lowered = text.strip().lower()
    for alias, code in _alias_index():
        if alias.lower() == lowered:
            return code
    from bot.mentions import departments_in  # inside a sentence, typos included (that module imports this one)

    mentions = departments_in(text)
    return mentions[0].code if mentions else None


@lru_cache(maxsize=1)
def doctor_roster() -> List[dict]:
    return list(_load_yaml(HOSPITAL_DATA / "doctors.yml")["doctors"])


@lru_cache(maxsize=1)
def hospital() -> dict:
    return _load_yaml(get_settings().hospital_file)


def hospital_name() -> str:
    return str(hospital().get("name", "本院"))


@lru_cache(maxsize=1)
def info_topics() -> List[InfoTopic]:
    return [
        InfoTopic(key, tuple(topic.get("keywords", [])), str(topic["answer"]).strip())
        for key, topic in hospital().get("topics", {}).items()
    ]


def find_info_topics(text: str) -> List[InfoTopic]:
    """The topics a question is about, in the order of data/hospital/hospital.yml."""
    text = text or ""
    return [topic for topic in info_topics() if any(word in text for word in topic.keywords)]
