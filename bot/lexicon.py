"""Patient wording the dialogue reads (relations, "same as mine"), loaded from data/hospital/lexicon.yml."""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional

import yaml

from bot.catalog import HOSPITAL_DATA


@lru_cache(maxsize=1)
def _lexicon() -> dict:
    with open(HOSPITAL_DATA / "lexicon.yml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _contains_any(text: str, words: List[str]) -> bool:
    return any(word in text for word in words)


def find_relation(text: str) -> Optional[str]:
    """'给我妈挂个号' -> '母亲'; None when the patient books for themselves."""
    relations: Dict[str, List[str]] = _lexicon()["relations"]
    for label, words in relations.items():
        if _contains_any(text or "", words):
            return label
    return None


def means_same_phone(text: str) -> bool:
    return _contains_any(text or "", _lexicon()["same_phone"])


def asks_other_date(text: str) -> bool:
    return _contains_any(text or "", _lexicon()["other_date"])


def means_stop(text: str) -> bool:
    """'算了，不挂了': the patient abandons what we were doing."""
    return _contains_any(text or "", _lexicon()["stop"])
