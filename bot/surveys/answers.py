"""What a patient's reply to a questionnaire item means.

Frequency items (PHQ-9, GAD-7): 0-3 by number, by letter (A-D, in the order the options are shown), or by words
(好几天, 几乎每天都这样). Ratings 1-5: 5分, 五星, ⭐⭐⭐⭐, 非常满意, 还行. NPS 0-10: 8, 8分, 十分, 满分.
Free text: anything. Any item: 跳过 (skip), 暂停 (pause), 不做了 (refuse). Word lists: data/surveys/answers.yml.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cn2an
import yaml

from bot.config import DATA_DIR
from bot.surveys.instruments import FREQUENCY, NPS, RATING, TEXT

ANSWERS_FILE = DATA_DIR / "surveys" / "answers.yml"
ANSWER, SKIP, PAUSE, REFUSE, INVALID = "answer", "skip", "pause", "refuse", "invalid"
RANGES = {FREQUENCY: (0, 3), RATING: (1, 5), NPS: (0, 10)}
CONTROL_MAX_IN_TEXT = 6
NUMBER = re.compile(
    r"^(?:选|选择|第)?\s*(10|[0-9]|十|[零〇一二两三四五六七八九])\s*(?:分|星|颗星|个|项|号)?\s*[。.!！~～]*$"
)
LETTER = re.compile(r"^(?:选)?\s*([a-dA-D])\s*[。.!！]*$")
STARS = re.compile(r"^[⭐★🌟]+$")


@dataclass(frozen=True)
class Reply:
    kind: str  # ANSWER, SKIP, PAUSE, REFUSE, INVALID
    value: Optional[int] = None
    text: Optional[str] = None


@lru_cache(maxsize=2)
def _lexicon(path: Path = ANSWERS_FILE) -> Dict[str, List[Tuple[str, object]]]:
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    out: Dict[str, List[Tuple[str, object]]] = {}
    out["control"] = [(str(word), kind) for kind, words in raw["control"].items() for word in words]
    for scale in (FREQUENCY, RATING, NPS):
        out[scale] = [(str(word), int(value)) for value, words in (raw.get(scale) or {}).items() for word in words]
    for key in out:
        out[key].sort(key=lambda pair: len(pair[0]), reverse=True)
    return out


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "").strip().lower()


def read(scale: str, text: str) -> Reply:
    """The meaning of `text` as an answer on `scale`."""
    normal = _normal(text)
    if not normal:
        return Reply(INVALID)
    scored = _scored(scale, normal)
    if scored is not None:
        return Reply(ANSWER, scored)
    if scale != TEXT or len(normal) <= CONTROL_MAX_IN_TEXT:  # a long comment that says 不用了 is a comment
        for word, kind in _lexicon()["control"]:
            if word in normal:
                return Reply(str(kind))
    if scale == TEXT:
        return Reply(ANSWER, text=text.strip()[:2000])
    return Reply(INVALID)


def _scored(scale: str, normal: str) -> Optional[int]:
    if scale not in RANGES:
        return None
    low, high = RANGES[scale]
    match = NUMBER.match(normal)
    if match:
        token = match.group(1)
        value = int(token) if token.isdigit() else int(cn2an.cn2an(token.replace("两", "二"), "smart"))
        return value if low <= value <= high else None
    if scale == FREQUENCY:
        letter = LETTER.match(normal)
        if letter:
            return "abcd".index(letter.group(1).lower())
    if scale == RATING and STARS.match(normal):
        return min(high, max(low, len(normal)))
    for word, value in _lexicon()[scale]:
        if word in normal:
            return int(value)  # type: ignore[arg-type]
    return None
