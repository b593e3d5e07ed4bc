"""Symptom triage: red flags first (urgency level 1-4 with reasons), then a ranked department recommendation.

    from bot.triage import assess
    result = assess("我爸突然嘴歪了，说话不清楚", age=67)
    result.level, result.red_flag, result.reasons, result.departments

`python -m bot.triage` runs it over JSON lines (bot/triage/__main__.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

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

    @property
    def reasons(self) -> List[str]:
        out = []
        for finding in self.findings:
            if finding.status in ("current", "history", "resolved"):
                note = "" if finding.status == "current" else ("，既往" if finding.status == "history" else "，已缓解")
                out.append(f"{finding.category}：{finding.name}（{finding.evidence}{note}）")
        for item in self.reading_findings:
            out.append(f"reading：{item.reason}（{item.reading.text.strip()}）")
        return out

    def as_dict(self) -> Dict[str, Any]:
        return {
            "text": self.text,
            "level": self.level,
            "red_flag": self.red_flag,
            "reasons": self.reasons,
            "departments": [{"code": d.code, "score": d.score} for d in self.departments],
        }


def urgency(text: str) -> tuple:
    """(level, findings, reading findings) without the department ranking: cheap enough for every message."""
    findings = [f for f in redflags.detect(text) if f.status in ("current", "history", "resolved")]
    reading_findings = readings_module.judge(readings_module.parse(text), text)
    levels = [f.level for f in findings] + [r.level for r in reading_findings]
    return (min(levels) if levels else 4), findings, reading_findings


def assessment_summary(text: str) -> Dict[str, Any]:
    """What the NLU pipeline attaches to every message: urgency only, no department ranking (cheap)."""
    level, findings, reading_findings = urgency(text)
    partial = Assessment(text, level, findings, reading_findings, [], False, None)
    return {"level": level, "red_flag": partial.red_flag, "crisis": partial.crisis, "reasons": partial.reasons}


def assess(text: str, age: Optional[float] = None, sex: Optional[str] = None) -> Assessment:
    level, findings, reading_findings = urgency(text)
    recommendation = ranker().rank(text, age=age, sex=sex)
    return Assessment(
        text=text,
        level=level,
        findings=findings,
        reading_findings=reading_findings,
        departments=recommendation.departments,
        clarify=recommendation.clarify,
        subject=redflags.subject(text),
        population=sorted(recommendation.population),
    )
