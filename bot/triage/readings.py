"""Readings patients report in chat (血压180/110, 心率38, 血氧85, 血糖2.8, 体温39度5) and what they mean.

Parsing: digits in any form (全角, 中文数字 through cn2an), the usual Chinese keywords, units converted to one unit
per kind (glucose mg/dL -> mmol/L, weight 斤 -> kg). Judging: data/triage/readings.yml, from ../shared/CLINICAL.md.
Also used by care plans to store a reading with its unit.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cn2an
import yaml

from bot.config import DATA_DIR

READINGS_FILE = DATA_DIR / "triage" / "readings.yml"

UNITS = {
    "blood_pressure": "mmHg",
    "heart_rate": "/min",
    "spo2": "%",
    "glucose": "mmol/L",
    "temperature": "°C",
    "weight": "kg",
    "hba1c": "%",
}


@dataclass(frozen=True)
class Reading:
    kind: str  # one of UNITS
    values: Dict[str, float]  # blood_pressure: systolic/diastolic (either may be missing); others: value
    unit: str
    text: str  # the words it was read from

    @property
    def value(self) -> Optional[float]:
        return self.values.get("value")


@dataclass(frozen=True)
class ReadingFinding:
    level: int
    reason: str
    reading: Reading
    measure: str  # systolic, diastolic, heart_rate...


@dataclass
class _Rule:
    measure: str
    level: int
    reason: str
    above: Optional[float] = None
    below: Optional[float] = None
    between: Optional[Tuple[float, float]] = None
    urgent_with_symptoms: Optional[int] = None
    crisis_symptoms: Sequence[str] = field(default_factory=tuple)

    def matches(self, value: float) -> bool:
        if self.above is not None and value > self.above:
            return True
        if self.below is not None and value < self.below:
            return True
        if self.between is not None:
            low, high = self.between
            return low <= value <= high
        return False


_NUM = r"(\d{1,3}(?:\.\d{1,2})?)(?!\s*(?:次|天|周|个|顿|小时|年|岁|片|粒|分钟|月|号|点钟|多天))"
_GAP = r"[^\d\n。！？!?；;]{0,6}?"
_PATTERNS: List[Tuple[str, re.Pattern]] = [
    ("bp_pair", re.compile(r"(?<![\d.])(\d{2,3})\s*(?:/|\\|比|-|—|～|~)\s*(\d{2,3})(?![\d.])(\s*mmhg)?", re.I)),
    ("systolic", re.compile(r"(?:高压|收缩压|上压|上面的?)" + _GAP + r"(\d{2,3})(?![\d.])")),
    ("diastolic", re.compile(r"(?:低压|舒张压|下压|下面的?)" + _GAP + r"(\d{2,3})(?![\d.])")),
    ("bp_single", re.compile(r"(?:血压|血亚|血鸭)" + _GAP + r"(\d{2,3})(?![\d./／比])")),
    ("glucose_high", re.compile(r"(?:血糖|血糖仪|测糖)" + _GAP + r"(?:显示)?\s*(hi|high)\b", re.I)),
    ("heart_rate", re.compile(r"(?:心率|心跳|脉搏|脉率|心律)" + _GAP + r"(\d{2,3})(?![\d.])")),
    ("spo2", re.compile(r"(?:血氧饱和度|氧饱和度|血氧|指脉氧|氧饱|spo2)" + _GAP + r"(\d{2,3})(?![\d.])", re.I)),
    ("hba1c", re.compile(r"(?:糖化血红蛋白|糖化|hba1c)" + _GAP + _NUM, re.I)),
    ("glucose", re.compile(r"(?:血糖|空腹|餐后两小时|餐后2小时|餐后|睡前)" + _GAP + _NUM + r"\s*(mg)?", re.I)),
    (
        "temperature",
        re.compile(
            r"(?:体温|发烧|发热|高烧|低烧|烧到|烧了|温度|腋温|耳温|肛温)"
            + _GAP
            + r"(\d{2}(?:\.\d)?)\s*(?:度|℃|°c?)?(\d)?",
            re.I,
        ),
    ),
    ("temperature_unit", re.compile(r"(?<![\d.])(\d{2}(?:\.\d)?)\s*(?:度|℃|°c)(\d)?(?!\d)", re.I)),
    ("weight", re.compile(r"(?:体重)" + _GAP + r"(\d{2,3}(?:\.\d)?)\s*(kg|公斤|千克|斤)?", re.I)),
]


CN_NUMERAL_RUN = re.compile(r"[零〇一二两三四五六七八九十百千]+(?:点[零〇一二三四五六七八九]+)?")


def _numeral_run(match: re.Match) -> str:
    run = match.group(0)
    after = match.string[match.end() : match.end() + 1]
    before = match.string[max(0, match.start() - 1) : match.start()]
    if len(run) < 2 and after not in ("度", "分", "点") and before != "度":
        return run  # 一直, 有一次: words, not numbers
    try:
        value = cn2an.cn2an(run.replace("两", "二"), "smart")
    except Exception:  # not a well-formed numeral (十百): leave the words as written
        return run
    return str(int(value)) if float(value).is_integer() else str(value)


def normalise(text: str) -> str:
    """Full-width to ASCII, Chinese numerals to digits (一百八十 -> 180, 三十九度五 -> 39度5, 一百五 -> 150);
    numerals inside words (一直, 一下) stay."""
    text = unicodedata.normalize("NFKC", text or "")
    return CN_NUMERAL_RUN.sub(_numeral_run, text)


def parse(text: str) -> List[Reading]:
    """Every reading in a message, in order; implausible numbers are skipped."""
    normal = normalise(text)
    found: List[Tuple[int, Reading]] = []
    taken: List[Tuple[int, int]] = []

    def free(match: re.Match) -> bool:
        return not any(match.start() < end and start < match.end() for start, end in taken)

    def add(match: re.Match, reading: Optional[Reading]) -> None:
        if reading is not None:
            found.append((match.start(), reading))
            taken.append((match.start(), match.end()))

    for name, pattern in _PATTERNS:
        for match in pattern.finditer(normal):
            if free(match):
                add(match, _reading(name, match, normal))
    return [reading for _, reading in sorted(found, key=lambda item: item[0])]


def _reading(name: str, match: re.Match, text: str) -> Optional[Reading]:
    words = match.group(0)
    if name == "bp_pair":
        systolic, diastolic = float(match.group(1)), float(match.group(2))
        context = text[max(0, match.start() - 12) : match.end() + 6]
        looks_like_bp = match.group(3) or "压" in context or "bp" in context.lower()
        if not (50 <= systolic <= 300 and 30 <= diastolic <= 200 and systolic > diastolic):
            return None
        if not looks_like_bp and ("月" in context or "号" in context or "点" in context):
            return None  # 3/5 is a date, 9-10 a time
        return Reading("blood_pressure", {"systolic": systolic, "diastolic": diastolic}, "mmHg", words)
    if name == "glucose_high":  # a meter's HI: above its range (33.3 mmol/L)
        return Reading("glucose", {"value": 33.3}, "mmol/L", words)
    value = float(match.group(1))
    if name in ("systolic", "bp_single"):
        return Reading("blood_pressure", {"systolic": value}, "mmHg", words) if 40 <= value <= 300 else None
    if name == "diastolic":
        return Reading("blood_pressure", {"diastolic": value}, "mmHg", words) if 20 <= value <= 200 else None
    if name == "heart_rate":
        return Reading("heart_rate", {"value": value}, UNITS["heart_rate"], words) if 15 <= value <= 300 else None
    if name == "spo2":
        return Reading("spo2", {"value": value}, "%", words) if 40 <= value <= 100 else None
    if name == "hba1c":
        return Reading("hba1c", {"value": value}, "%", words) if 3 <= value <= 20 else None
    if name == "glucose":
        if match.group(2):  # mg/dL
            value = round(value / 18.0, 1)
        return Reading("glucose", {"value": value}, "mmol/L", words) if 1.0 <= value <= 40 else None
    if name in ("temperature", "temperature_unit"):
        if match.group(2) and "." not in match.group(1):
            value = float(f"{match.group(1)}.{match.group(2)}")
        return Reading("temperature", {"value": value}, "°C", words) if 34 <= value <= 44 else None
    if name == "weight":
        if match.group(2) == "斤":
            value = value / 2
        return Reading("weight", {"value": value}, "kg", words) if 2 <= value <= 300 else None
    return None


@lru_cache(maxsize=4)
def _rules(path: Path = READINGS_FILE) -> List[_Rule]:
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    symptoms = raw.get("crisis_symptoms", {})
    rules = []
    for item in raw["rules"]:
        between = item.get("between")
        rules.append(
            _Rule(
                measure=item["kind"],
                level=int(item["level"]),
                reason=item["reason"],
                above=item.get("above"),
                below=item.get("below"),
                between=(float(between[0]), float(between[1])) if between else None,
                urgent_with_symptoms=item.get("urgent_with_symptoms"),
                crisis_symptoms=tuple(symptoms.get(item["kind"], ())),
            )
        )
    return rules


def _measures(reading: Reading) -> Dict[str, float]:
    if reading.kind == "blood_pressure":
        return dict(reading.values)
    return {reading.kind: reading.values["value"]}


def judge(readings: Sequence[Reading], text: str = "") -> List[ReadingFinding]:
    """The readings past a threshold, most urgent first. `text` (the whole message) can make an urgent reading
    an emergency (血压190 + 头痛)."""
    findings = []
    for reading in readings:
        for measure, value in _measures(reading).items():
            for rule in _rules():
                if rule.measure == measure and rule.matches(value):
                    level = rule.level
                    if rule.urgent_with_symptoms and any(word in text for word in rule.crisis_symptoms):
                        level = min(level, int(rule.urgent_with_symptoms))
                    findings.append(ReadingFinding(level, rule.reason, reading, measure))
                    break
    return sorted(findings, key=lambda finding: finding.level)
