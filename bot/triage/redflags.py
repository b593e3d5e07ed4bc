"""Red flags in a patient's message: emergencies first, on every inbound message.

The lexicon is data (data/triage/red_flags.yml): categories of ../shared/CLINICAL.md, each with patterns. A pattern
is a list of groups of alternatives; it matches when every group occurs in the same sentence, in any order
(胸口 + 压着疼; 全身起疹 + 喉咙发紧). An alternative starting with `re:` is a regular expression.

What a match means depends on its context, in this order:
- informational: the sentence asks about a condition (中风有哪些前兆？) or tells a story (电视剧里), and has no
  present-tense cue (我现在, 突然, 刚才): ignored;
- negated: a negation cue shortly before the match in its clause, or between its groups (没有胸痛, 胸口不疼):
  ignored, unless the negation is part of the symptom (说不出话, 叫不醒, 止不住, 不停地抽);
- history: a history cue before it in its clause (以前中过风, 去年心梗): level 3, advise a visit;
- resolved: a resolved cue after it in the message (上周晕倒过一次，现在没事了): level 3;
- otherwise current: the category's level (1 or 2), or the pattern's own.
Family members (我爸, 孩子) count the same as the patient: the subject only changes the wording.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from bot.config import DATA_DIR

RED_FLAGS_FILE = DATA_DIR / "triage" / "red_flags.yml"

SENTENCE_SPLIT = re.compile(r"[。！？!?；;\n]+")
CLAUSE_SPLIT = re.compile(r"[，,、\s]+")
NEGATION_WINDOW = 4  # a negation cue must end at most this many characters before the symptom
# Negation-looking words that do not negate what follows (不停地抽搐, 无法呼吸, 不知道怎么了胸口压着疼).
PSEUDO_NEGATIONS = (
    "不停", "不断", "不止", "不住", "不知", "不清楚", "不确定", "不晓得", "不舒服", "不对劲", "不得了", "不行",
    "不能", "不了", "无法", "没法", "无力", "没力", "不省人事", "没反应", "没有反应", "没意识", "没知觉",
    "没呼吸", "没气", "没了", "不醒", "不动", "不出", "不上", "不过", "不来", "不清", "不利索", "不听使唤",
    "不灵", "不好", "不太好", "没用", "没效果", "没缓解", "不见好", "不管用",
)  # fmt: skip

LEVEL_HISTORY = 3
MAX_RETRIES = 4  # later occurrences tried after a negated one


@dataclass(frozen=True)
class Finding:
    category: str
    name: str  # the category's name for staff (疑似心源性胸痛)
    level: int  # 1-2 current; 3 history or resolved
    status: str  # current, history, resolved, negated, informational
    evidence: str  # the matched words, as written
    crisis: bool  # suicide and self-harm: crisis wording and a human at once


@dataclass(frozen=True)
class _Pattern:
    groups: Tuple[Tuple[Tuple[str, Optional[re.Pattern]], ...], ...]  # (plain, None) or ("", regex)
    level: int
    unless: Tuple[Tuple[str, Optional[re.Pattern]], ...] = ()  # any of these in the sentence: no match


@dataclass(frozen=True)
class _Category:
    id: str
    name: str
    level: int
    patterns: Tuple[_Pattern, ...]
    crisis: bool


@dataclass(frozen=True)
class Lexicon:
    categories: Tuple[_Category, ...]
    negation: Tuple[str, ...]
    history: Tuple[str, ...]
    resolved: Tuple[str, ...]
    informational: Tuple[str, ...]
    present: Tuple[str, ...]
    subjects: Dict[str, str]
    negation_exceptions: Tuple[str, ...]  # contain a negation character but do not negate (不知道, 止不住)
    history_exceptions: Tuple[str, ...]  # contain a history cue but are not history (以前从来没这么疼过)
    fiction: Tuple[str, ...] = ()  # a drama, a dream, a drill: never a patient's emergency...
    fiction_real: Tuple[str, ...] = ()  # ...unless it turned real (醒来发现)
    message_patterns: Tuple[_MessagePattern, ...] = ()


@dataclass(frozen=True)
class _MessagePattern:
    """A pattern whose `context` may sit in another sentence of the message (化疗后…。今天发烧38.6)."""

    category: str
    pattern: _Pattern
    context: Tuple[Tuple[Tuple[str, Optional[re.Pattern]], ...], ...]
    unless: Tuple[Tuple[str, Optional[re.Pattern]], ...]


def _alternative(raw: str) -> Tuple[str, Optional[re.Pattern]]:
    raw = str(raw)
    if raw.startswith("re:"):
        return "", re.compile(raw[3:])
    return raw, None


def _pattern(raw, default_level: int) -> _Pattern:
    level, unless = default_level, ()
    if isinstance(raw, dict):
        level = int(raw.get("level", default_level))
        unless = tuple(_alternative(alt) for alt in raw.get("unless") or ())
        raw = raw["all"]
    if raw and all(isinstance(item, str) for item in raw):  # a single group written flat
        raw = [raw]
    groups = tuple(tuple(_alternative(alt) for alt in group) for group in raw)
    return _Pattern(groups, level, unless)


@lru_cache(maxsize=4)
def lexicon(path: Path = RED_FLAGS_FILE) -> Lexicon:
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    crisis = set(raw.get("crisis_categories", []))
    categories = []
    for item in raw["categories"]:
        level = int(item["level"])
        patterns = [_pattern(p, level) for p in item.get("patterns", [])]
        phrases = item.get("phrases")
        if phrases:
            patterns.append(_pattern([phrases], level))
        name = item.get("name", item["id"])
        unless = tuple(_alternative(alt) for alt in item.get("unless") or ())
        if unless:  # a category's `unless` applies to each of its patterns
            patterns = [_Pattern(p.groups, p.level, p.unless + unless) for p in patterns]
        categories.append(_Category(item["id"], name, level, tuple(patterns), item["id"] in crisis))
    return Lexicon(
        categories=tuple(categories),
        negation=tuple(sorted(raw.get("negation", []), key=len, reverse=True)),
        history=tuple(raw.get("history", [])),
        resolved=tuple(raw.get("resolved", [])),
        informational=tuple(raw.get("informational", [])),
        present=tuple(raw.get("present", [])),
        subjects=dict(raw.get("subjects", {})),
        negation_exceptions=_longest_first(PSEUDO_NEGATIONS + tuple(raw.get("negation_exceptions") or ())),
        history_exceptions=_longest_first(tuple(raw.get("history_exceptions") or ())),
        fiction=tuple(map(str, raw.get("fiction") or ())),
        fiction_real=tuple(map(str, raw.get("fiction_real") or ())),
        message_patterns=tuple(_message_pattern(item) for item in raw.get("message_patterns") or ()),
    )


def _message_pattern(raw: dict) -> _MessagePattern:
    pattern = _pattern({"all": raw["all"], "level": raw["level"]}, int(raw["level"]))
    context = tuple(tuple(_alternative(alt) for alt in group) for group in raw.get("context") or ())
    unless = tuple(_alternative(alt) for alt in raw.get("unless") or ())
    return _MessagePattern(str(raw["category"]), pattern, context, unless)


def _longest_first(words: Sequence[str]) -> Tuple[str, ...]:
    return tuple(sorted(set(map(str, words)), key=len, reverse=True))


def _find(alternatives, sentence: str, start: int = 0) -> Optional[Tuple[int, int]]:
    best: Optional[Tuple[int, int]] = None
    for plain, regex in alternatives:
        if regex is not None:
            match = regex.search(sentence, start)
            span = (match.start(), match.end()) if match else None
        else:
            position = sentence.find(plain, start)
            span = (position, position + len(plain)) if position >= 0 else None
        if span and (best is None or span[0] < best[0] or (span[0] == best[0] and span[1] > best[1])):
            best = span
    return best


def _masked(text: str, pseudo: Sequence[str]) -> str:
    """`text` with pseudo-negations blanked out, same length."""
    for word in pseudo:
        text = text.replace(word, "□" * len(word))
    return text


def _negated(lex: Lexicon, sentence: str, spans: List[Tuple[int, int]]) -> bool:
    """Any matched group negated in its own clause (没有胸痛; 发烧，但是没有抽搐), or a negation between two groups
    of one clause (胸口不疼)."""
    for start, _ in spans:
        _, before = _clause_before(sentence, start)
        window = _masked(before, lex.negation_exceptions)[-(NEGATION_WINDOW + 2) :]
        for cue in lex.negation:
            position = window.rfind(cue)
            if position >= 0 and len(window) - (position + len(cue)) <= NEGATION_WINDOW:
                return True
    ordered = sorted(spans)
    for (_, end), (start, _) in zip(ordered, ordered[1:]):
        gap = _masked(sentence[end:start], lex.negation_exceptions)
        if start > end and not CLAUSE_SPLIT.search(gap) and any(cue in gap for cue in lex.negation):
            return True
    return False


def _clause_before(sentence: str, position: int) -> Tuple[int, str]:
    start = max((m.end() for m in CLAUSE_SPLIT.finditer(sentence, 0, position)), default=0)
    return start, sentence[start:position]


def _history(lex: Lexicon, sentence: str, spans: List[Tuple[int, int]]) -> bool:
    """Every matched group has a history cue before it in its clause, with no present cue after that cue
    (以前就有癫痫，今天又犯了 is current; 去年做了支架今天胸口又压着疼 is current)."""
    for start, _ in spans:
        _, before = _clause_before(sentence, start)
        before = _masked(before, lex.history_exceptions)
        positions = [before.rfind(cue) + len(cue) for cue in lex.history if cue in before]
        if not positions:
            return False
        after_cue = before[max(positions) :]
        if any(cue in after_cue for cue in lex.present):
            return False
    return True


def _informational(lex: Lexicon, sentence: str) -> bool:
    """A question about a condition, or fiction (a drama, a dream, a drill) that did not turn real."""
    if any(cue in sentence for cue in lex.fiction) and not any(cue in sentence for cue in lex.fiction_real):
        return True
    return any(cue in sentence for cue in lex.informational) and not any(cue in sentence for cue in lex.present)


def sentences(text: str) -> List[Tuple[int, str]]:
    out, position = [], 0
    for part in SENTENCE_SPLIT.split(text):
        start = text.find(part, position) if part else position
        out.append((start, part))
        position = start + len(part)
    return [(start, part) for start, part in out if part.strip()]


def _match(
    lex: Lexicon,
    category: _Category,
    pattern: _Pattern,
    sentence: str,
    offset: int,
    informational: bool,
    resolved_at: List[int],
) -> List[Finding]:
    """The pattern's findings in a sentence: the first match, and when that one is negated, the next ones
    (没有胸痛，但胸口压着疼)."""
    findings: List[Finding] = []
    start = 0
    for _ in range(MAX_RETRIES):
        spans = []
        for group in pattern.groups:
            span = _find(group, sentence, start)
            if span is None:
                return findings
            spans.append(span)
        first, last = min(s for s, _ in spans), max(e for _, e in spans)
        if informational:
            status, level = "informational", 4
        elif _negated(lex, sentence, spans):
            status, level = "negated", 4
        elif _history(lex, sentence, spans):
            status, level = "history", LEVEL_HISTORY
        elif any(position > offset + first for position in resolved_at):
            status, level = "resolved", LEVEL_HISTORY
        else:
            status, level = "current", pattern.level
        findings.append(Finding(category.id, category.name, level, status, sentence[first:last], category.crisis))
        if status != "negated":
            return findings
        start = first + 1
    return findings


def normalise(text: str) -> str:
    """Full-width to half-width, traditional to simplified characters (character by character: offsets stay)."""
    text = unicodedata.normalize("NFKC", text or "")
    try:
        from jionlp import tra2sim

        converted = tra2sim(text, mode="char")
        return converted if len(converted) == len(text) else text
    except Exception:  # conversion is a convenience: the text as written is still checked
        return text


def detect(text: str, lex: Optional[Lexicon] = None) -> List[Finding]:
    """One finding per category that matched, the most serious status first (current before history)."""
    lex = lex or lexicon()
    text = normalise(text)
    resolved_at = [text.find(cue) for cue in lex.resolved if cue in text]
    parts = [(offset, sentence, _informational(lex, sentence)) for offset, sentence in sentences(text)]
    by_id = {category.id: category for category in lex.categories}
    candidates = [(category, pattern) for category in lex.categories for pattern in category.patterns]
    candidates += [
        (by_id[item.category], item.pattern)
        for item in lex.message_patterns
        if item.category in by_id
        and not (item.unless and _find(item.unless, text) is not None)
        and all(_context_present(lex, group, parts) for group in item.context)
    ]
    best: Dict[str, Finding] = {}
    for offset, sentence, informational in parts:
        for category, pattern in candidates:
            if pattern.unless and _find(pattern.unless, sentence) is not None:
                continue
            for finding in _match(lex, category, pattern, sentence, offset, informational, resolved_at):
                _keep(best, finding)
    return sorted(best.values(), key=lambda f: (RANK[f.status], f.level))


RANK = {"current": 0, "resolved": 1, "history": 1, "negated": 2, "informational": 3}


def _keep(best: Dict[str, Finding], finding: Finding) -> None:
    known = best.get(finding.category)
    if known is None or (RANK[finding.status], finding.level) < (RANK[known.status], known.level):
        best[finding.category] = finding


def _context_present(lex: Lexicon, group, parts: List[Tuple[int, str, bool]]) -> bool:  # type: ignore[no-untyped-def]
    """The context group occurs, not negated, in a sentence that is not a question about a condition."""
    for _, sentence, informational in parts:
        if informational:
            continue
        span = _find(group, sentence)
        if span is not None and not _negated(lex, sentence, [span]):
            return True
    return False


def subject(text: str, lex: Optional[Lexicon] = None) -> Optional[str]:
    """Who the message is about when it is not the writer (父亲, 孩子...), or None."""
    lex = lex or lexicon()
    text = normalise(text)
    hits = [(text.find(cue), -len(cue), label) for cue, label in lex.subjects.items() if cue in text]
    return min(hits)[2] if hits else None
