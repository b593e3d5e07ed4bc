"""Find the hospital's departments and doctors named in a message, typos included.

The hospital's own lists (data/hospital/departments.yml with aliases, data/hospital/doctors.yml) are closed
sets, so the lists themselves are the best extractor: exact, instant, and current as soon as a hospital edits a
file, with no retraining. Chinese typos are mostly input-method homophones (新内科 for 心内科, 消话内科 for
消化内科), so a term of three or more characters also matches a window of the message with the same toneless
pinyin (pypinyin). Shorter terms match exactly only: 儿科 and 耳科 sound alike and are different departments.

Matches never overlap; longer terms win (神经外科 over 外科), exact matches win over homophones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from pypinyin import lazy_pinyin

from bot import catalog

DEPARTMENT = "department"
DOCTOR = "doctor"
MIN_HOMOPHONE_CHARS = 3


@dataclass(frozen=True)
class Mention:
    kind: str  # DEPARTMENT or DOCTOR
    start: int
    end: int
    text: str  # as written
    term: str  # the catalog's term it matched (alias, department name or doctor name)
    code: str  # department code, or the doctor's name
    exact: bool


@dataclass(frozen=True)
class _Term:
    kind: str
    term: str
    code: str


def _pinyin(text: str) -> List[str]:
    syllables = lazy_pinyin(text, errors=lambda chunk: list(chunk))
    if len(syllables) != len(text):  # keep one syllable per character whatever pypinyin did
        syllables = [lazy_pinyin(char, errors=lambda chunk: list(chunk))[0] for char in text]
    return syllables


class MentionFinder:
    def __init__(self, terms: Iterable[Tuple[str, str, str]]) -> None:
        unique: Dict[str, _Term] = {}
        for kind, term, code in terms:
            if term and term.lower() not in unique:
                unique[term.lower()] = _Term(kind, term, code)
        self._exact = sorted(unique.values(), key=lambda t: len(t.term), reverse=True)
        self._sounds: Dict[Tuple[str, ...], _Term] = {}
        for item in self._exact:
            if len(item.term) >= MIN_HOMOPHONE_CHARS and _is_chinese(item.term):
                self._sounds.setdefault(tuple(_pinyin(item.term)), item)
        self._sound_lengths = {len(key) for key in self._sounds}
        self._exact_by_length: Dict[int, List[_Term]] = {}
        for item in self._exact:
            self._exact_by_length.setdefault(len(item.term), []).append(item)
        self._lengths = sorted(set(self._exact_by_length), reverse=True)
        self._recent = lru_cache(maxsize=256)(self._scan)

    def find(self, text: Optional[str], boundaries: Optional[Set[int]] = None) -> Tuple[Mention, ...]:
        """Mentions in `text`, in order. With word `boundaries` (token offsets), a two-character doctor name
        must be a word of its own (高峰 the doctor, not 高峰期 the rush hour). Recent answers are remembered: the
        NLU pipeline asks twice per message (features, then entities)."""
        if not text:
            return ()
        return self._recent(text, frozenset(boundaries) if boundaries is not None else None)

    def _scan(self, text: str, boundaries: Optional[FrozenSet[int]]) -> Tuple[Mention, ...]:
        lowered = text.lower()
        syllables = _pinyin(text) if self._sounds else []
        taken = [False] * len(text)
        found: List[Mention] = []

        def claim(item: _Term, start: int, end: int, exact: bool) -> None:
            found.append(Mention(item.kind, start, end, text[start:end], item.term, item.code, exact))
            taken[start:end] = [True] * (end - start)

        for size in self._lengths:
            for item in self._exact_by_length.get(size, ()):
                needle = item.term.lower()
                position = lowered.find(needle)
                while position >= 0:
                    end = position + size
                    if not any(taken[position:end]) and _stands_alone(item, position, end, boundaries):
                        claim(item, position, end, True)
                    position = lowered.find(needle, position + 1)
            if size in self._sound_lengths:
                for start in range(0, len(text) - size + 1):
                    end = start + size
                    if not any(taken[start:end]):
                        item = self._sounds.get(tuple(syllables[start:end]))
                        if item is not None:
                            claim(item, start, end, False)
        return tuple(sorted(found, key=lambda mention: mention.start))


def _stands_alone(item: _Term, start: int, end: int, boundaries: Optional[FrozenSet[int]]) -> bool:
    if boundaries is None or item.kind != DOCTOR or len(item.term) > 2:
        return True
    return start in boundaries and end in boundaries


def _is_chinese(term: str) -> bool:
    return all("\u4e00" <= char <= "\u9fff" for char in term)


def catalog_terms() -> List[Tuple[str, str, str]]:
    terms: List[Tuple[str, str, str]] = []
    for info in catalog.departments().values():
        terms.append((DEPARTMENT, info.name, info.code))
        terms.extend((DEPARTMENT, alias, info.code) for alias in info.aliases)
    terms.extend((DOCTOR, doctor["name"], doctor["name"]) for doctor in catalog.doctor_roster())
    return terms


@lru_cache(maxsize=1)
def finder() -> MentionFinder:
    """The finder over this hospital's data files (read once per process)."""
    return MentionFinder(catalog_terms())


def departments_in(text: Optional[str]) -> Sequence[Mention]:
    return [mention for mention in finder().find(text) if mention.kind == DEPARTMENT]
