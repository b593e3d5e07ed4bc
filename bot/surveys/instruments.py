"""The questionnaires, read from data/surveys/instruments.yml (wording and scoring are data, not code)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

from bot.config import DATA_DIR

INSTRUMENTS_FILE = DATA_DIR / "surveys" / "instruments.yml"
FREQUENCY, RATING, NPS, TEXT = "frequency", "rating", "nps", "text"


@dataclass(frozen=True)
class Option:
    value: int
    label: str
    code: Optional[str] = None  # LOINC answer code (LA...)
    display: Optional[str] = None  # English display of the code


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    scale: str
    loinc: Optional[str] = None
    safety: bool = False  # PHQ-9 item 9: any answer above 0 means a crisis response and a human

    @property
    def link_id(self) -> str:
        return self.loinc or self.id


@dataclass(frozen=True)
class Band:
    low: int
    high: int
    code: str
    label: str


@dataclass(frozen=True)
class Instrument:
    key: str
    title: str
    intro: str
    stem: Optional[str]
    items: Tuple[Item, ...]
    bands: Tuple[Band, ...]
    loinc_panel: Optional[str]
    loinc_total: Optional[str]
    positive_from: Optional[int]
    options: Dict[str, Tuple[Option, ...]]  # scale -> options

    @property
    def scored(self) -> bool:
        return bool(self.bands)

    @property
    def max_score(self) -> int:
        return sum(max((o.value for o in self.options.get(item.scale, ())), default=0) for item in self.items)

    def item(self, item_id: str) -> Item:
        return next(item for item in self.items if item.id == item_id)

    def band(self, score: int) -> Optional[Band]:
        return next((band for band in self.bands if band.low <= score <= band.high), None)


@lru_cache(maxsize=2)
def instruments(path: Path = INSTRUMENTS_FILE) -> Dict[str, Instrument]:
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    scales: Dict[str, Tuple[Option, ...]] = {}
    for name, spec in (raw.get("scales") or {}).items():
        options = [Option(int(o[0]), str(o[1]), *(str(x) for x in o[2:4])) for o in (spec or {}).get("options", [])]
        if "range" in (spec or {}):
            low, high = spec["range"]
            options = [Option(value, str(value)) for value in range(int(low), int(high) + 1)]
        scales[name] = tuple(options)
    out: Dict[str, Instrument] = {}
    for key, spec in raw["instruments"].items():
        default_scale = spec.get("scale", TEXT)
        items = tuple(
            Item(
                id=str(item["id"]),
                text=str(item["text"]),
                scale=str(item.get("scale", default_scale)),
                loinc=item.get("loinc"),
                safety=bool(item.get("safety", False)),
            )
            for item in spec["items"]
        )
        loinc = spec.get("loinc") or {}
        out[key] = Instrument(
            key=key,
            title=str(spec["title"]),
            intro=str(spec.get("intro", "")),
            stem=spec.get("stem"),
            items=items,
            bands=tuple(Band(int(b[0]), int(b[1]), str(b[2]), str(b[3])) for b in spec.get("bands", [])),
            loinc_panel=loinc.get("panel"),
            loinc_total=loinc.get("total"),
            positive_from=spec.get("positive_from"),
            options={scale: scales.get(scale, ()) for scale in {item.scale for item in items}},
        )
    return out


def get(key: str) -> Instrument:
    try:
        return instruments()[key]
    except KeyError:
        raise KeyError(f"unknown questionnaire {key!r}; known: {sorted(instruments())}") from None


def options_line(instrument: Instrument, item: Item) -> str:
    """How to answer, shown under the question: '0 完全不会 / 1 好几天 / ...'."""
    options: List[Option] = list(instrument.options.get(item.scale, ()))
    if item.scale == NPS:
        return "请回复 0–10 的数字。"
    if item.scale == TEXT or not options:
        return ""
    letters = "ABCDEFG"
    parts = [f"{o.value} {o.label}" for o in options]
    hint = f"（也可以回复 {'/'.join(letters[: len(options)])}）" if item.scale == FREQUENCY else ""
    return "请回复：" + " / ".join(parts) + hint
