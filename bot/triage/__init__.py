"""Symptom triage: red flags first (urgency level 1-4 with reasons), then a ranked department recommendation.

    from bot.triage import assess
    result = assess("我爸突然嘴歪了，说话不清楚", age=67)
    result.level, result.red_flag, result.reasons, result.departments

`python -m bot.triage` runs it over JSON lines (bot/triage/__main__.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from bot.triage import readings as readings_module
from bot.triage import redflags
from bot.triage.departments import Ranked, ranker
from bot.triage.readings import ReadingFinding
from bot.triage.redflags import Finding

LEVEL_EMERGENCY_MAX = 2  # levels 1 and 2: call 120 / come to the emergency department now


@dataclass
class Assessment:
    text: str
    level: int
    findings: List[Finding]
    reading_findings: List[ReadingFinding]
    departments: List[Ranked]
    clarify: bool
    subject: Optional[str]
    population: List[str] = field(default_factory=list)

    @property
    def red_flag(self) -> bool:
        return self.level <= LEVEL_EMERGENCY_MAX

    @property
    def crisis(self) -> bool:
        """Suicide or self-harm: crisis wording, the psychological-aid hotline and a human at once."""
        return any(f.crisis and f.status == "current" for f in self.findings)

    def described(self) -> List[Tuple[str, str]]:
        """(category, what staff and patients read: 疑似脑卒中（中风）（嘴歪）), most urgent first."""
        notes = {"current": "", "history": "，既往", "resolved": "，已缓解"}
        out = [(f.category, f"{f.name}（{f.evidence}{notes[f.status]}）") for f in self.findings]
        out += [("reading", f"{item.reason}（{item.reading.text.strip()}）") for item in self.reading_findings]
        return out

    @property
    def reasons(self) -> List[str]:
        return [f"{category}：{text}" for category, text in self.described()]

    def as_dict(self) -> Dict[str, Any]:
        return {
            "text": self.text,
            "level": self.level,
            "red_flag": self.red_flag,
            "reasons": self.reasons,
            "departments": [{"code": d.code, "score": d.score} for d in self.departments],
        }


def urgency(text: str) -> Tuple[int, List[Finding], List[ReadingFinding]]:
    """(level, findings, reading findings) without the department ranking: cheap enough for every message."""
    findings = [f for f in redflags.detect(text) if f.status in ("current", "history", "resolved")]
    reading_findings = readings_module.judge(readings_module.parse(text), text)
    levels = [f.level for f in findings] + [r.level for r in reading_findings]
    return (min(levels) if levels else 4), findings, reading_findings


def assessment_summary(text: str) -> Dict[str, Any]:
    """What the NLU pipeline attaches to every message: urgency only, no department ranking (cheap)."""
    result = assess(text, departments=False)
    return {"level": result.level, "red_flag": result.red_flag, "crisis": result.crisis, "reasons": result.reasons}


def assess(text: str, age: Optional[float] = None, sex: Optional[str] = None, departments: bool = True) -> Assessment:
    """Urgency with reasons, and (unless `departments` is False: the cheap check every message gets) the ranked
    departments."""
    level, findings, reading_findings = urgency(text)
    result = Assessment(text, level, findings, reading_findings, [], False, redflags.subject(text))
    if departments:
        recommendation = ranker().rank(text, age=age, sex=sex)
        result.departments = recommendation.departments
        result.clarify = recommendation.clarify
        result.population = sorted(recommendation.population)
    return result
