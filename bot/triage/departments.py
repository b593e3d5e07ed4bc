"""Which department a patient's free text belongs to: a ranked top 3 with scores.

Two sources, combined:
- knowledge (data/triage/knowledge/<department>.yml): terms patients write (symptoms, body parts, diseases,
  tests, drugs) with a weight per department; matched leftmost-longest, so 乙肝表面抗原 counts once, not also as 乙肝;
- a learned model (character n-grams + logistic regression) trained on the project's own labelled messages
  (data/triage/examples*.yml) and on the knowledge terms themselves. It generalises to words the knowledge
  does not list. Trained by `make train` (python -m bot.triage.departments) into models/triage/, named by a
  digest of the data files: a process that finds no model for the current data trains one (~30 s) and keeps it.
Then age and sex (data/triage/routing.yml): a child goes to pediatrics, a pregnancy to obstetrics, no gynecology
for a man. Never trained on ../shared/eval.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import yaml

from bot.config import DATA_DIR, PROJECT_ROOT

logger = logging.getLogger(__name__)

TRIAGE_DATA = DATA_DIR / "triage"
KNOWLEDGE_DIR = TRIAGE_DATA / "knowledge"
ROUTING_FILE = TRIAGE_DATA / "routing.yml"
CACHE_DIR = PROJECT_ROOT / "models" / "triage"  # built by `make train`, like the Rasa model
MODEL_VERSION = "2"  # bump when the model's code changes
# Share of the knowledge score when any term matched. Held-out folds of data/triage/examples.yml (3 folds) gave
# top-1 0.885 (model alone), 0.887 (0.3), 0.886 (0.5), 0.883 (0.7), 0.865 (knowledge alone).
KNOWLEDGE_WEIGHT = 0.3

AGE = re.compile(r"(\d{1,3})\s*(?:岁|周岁)|(\d{1,2})\s*(?:个月|个多月)(?:大)?|(\d{1,2})\s*(?:天|周)大")
PREGNANCY_WEEKS = re.compile(r"孕\s*\d{1,2}\s*(?:周|w)", re.I)


@dataclass(frozen=True)
class Ranked:
    code: str
    score: float


@dataclass
class Recommendation:
    departments: List[Ranked]
    clarify: bool  # the first two are close: ask one question before booking
    population: Set[str] = field(default_factory=set)  # child, pregnant, male, female, elderly
    matched_terms: List[str] = field(default_factory=list)


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def knowledge_files(directory: Path = KNOWLEDGE_DIR) -> List[Path]:
    return sorted(directory.glob("*.yml"))


def load_knowledge(directory: Path = KNOWLEDGE_DIR) -> dict:
    """{"departments": {code: {weight: [terms]}}, "populations": {...}} from one file per department."""
    merged: dict = {"departments": {}, "populations": {}}
    for path in knowledge_files(directory):
        raw = _load(path)
        if "department" in raw:
            merged["departments"][str(raw["department"])] = raw.get("terms") or {}
        merged["populations"].update(raw.get("populations") or {})
    return merged


class Knowledge:
    """Term -> {department: weight}, matched leftmost-longest in a message."""

    def __init__(self, raw: dict) -> None:
        weights: Dict[str, Dict[str, float]] = defaultdict(dict)
        for code, buckets in (raw.get("departments") or {}).items():
            for weight, terms in (buckets or {}).items():
                for term in terms or []:
                    term = str(term).strip()
                    if len(term) >= 2:
                        weights[term.lower()][code] = max(float(weight), weights[term.lower()].get(code, 0.0))
        self.weights = dict(weights)
        self._by_first: Dict[str, List[str]] = defaultdict(list)
        for term in sorted(self.weights, key=len, reverse=True):
            self._by_first[term[0]].append(term)
        self.populations: Dict[str, Tuple[str, ...]] = {
            name: tuple(str(cue) for cue in cues or []) for name, cues in (raw.get("populations") or {}).items()
        }

    def terms_in(self, text: str) -> List[str]:
        lowered, found, position = text.lower(), [], 0
        while position < len(lowered):
            for term in self._by_first.get(lowered[position], ()):
                if lowered.startswith(term, position):
                    found.append(term)
                    position += len(term)
                    break
            else:
                position += 1
        return found

    def scores(self, terms: Iterable[str]) -> Dict[str, float]:
        scores: Dict[str, float] = defaultdict(float)
        for term in terms:
            for code, weight in self.weights[term].items():
                scores[code] += weight
        return dict(scores)

    def population(self, text: str) -> Set[str]:
        return {name for name, cues in self.populations.items() if any(cue in text for cue in cues)}


def _training_set(knowledge: Knowledge, examples: Sequence[dict]) -> Tuple[List[str], List[str]]:
    texts, labels = [], []
    for example in examples:
        texts.append(str(example["text"]))
        labels.append(str(example["department"]))
    for term, weights in knowledge.weights.items():
        code, weight = max(weights.items(), key=lambda item: item[1])
        if weight >= 3 and list(weights.values()).count(weight) == 1:
            texts.append(term)
            labels.append(code)
    return texts, labels


def train_model(texts: Sequence[str], labels: Sequence[str]):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=10.0),
    )
    model.fit(list(texts), list(labels))
    return model


class DepartmentRanker:
    def __init__(
        self,
        knowledge: Knowledge,
        routing: dict,
        model=None,
        knowledge_weight: float = KNOWLEDGE_WEIGHT,
    ) -> None:
        self.knowledge = knowledge
        self.routing = routing
        self.model = model
        self.knowledge_weight = knowledge_weight

    def raw_scores(self, text: str) -> Tuple[Dict[str, float], List[str]]:
        terms = self.knowledge.terms_in(text)
        known = self.knowledge.scores(terms)
        total = sum(known.values())
        combined: Dict[str, float] = defaultdict(float)
        share = self.knowledge_weight if total > 0 else 0.0
        if total > 0:
            for code, value in known.items():
                combined[code] += share * value / total
        if self.model is not None:
            probabilities = self.model.predict_proba([text])[0]
            for code, probability in zip(self.model.classes_, probabilities):
                combined[code] += (1.0 - share) * float(probability)
        return dict(combined), terms

    def rank(self, text: str, age: Optional[float] = None, sex: Optional[str] = None, k: int = 3) -> Recommendation:
        text = text or ""
        scores, terms = self.raw_scores(text)
        population = self.knowledge.population(text)
        age = age if age is not None else age_in(text)
        if age is not None and age < float(self.routing.get("child_age_below", 14)):
            population.add("child")
        if age is not None and age >= 18:
            population.discard("child")  # 我儿子今年25岁: an adult son
        if PREGNANCY_WEEKS.search(text):
            population.add("pregnant")
        if sex in ("male", "female"):
            population.add(sex)
        scores = self._route(scores, population, sex)
        ordered = sorted(scores.items(), key=lambda item: item[1], reverse=True)
        total = sum(score for _, score in ordered) or 1.0
        top = [Ranked(code, round(score / total, 4)) for code, score in ordered[:k] if score > 0]
        ratio = float(self.routing.get("clarify_ratio", 0.75))
        clarify = len(top) >= 2 and top[1].score >= ratio * top[0].score
        return Recommendation(top, clarify, population, terms)

    def _route(self, scores: Dict[str, float], population: Set[str], sex: Optional[str]) -> Dict[str, float]:
        scores = dict(scores)
        if "child" in population:
            moved = 0.0
            for code in self.routing.get("child_to_pediatrics", []):
                if code in scores:
                    moved += scores[code] * 0.8
                    scores[code] *= 0.2
            scores["pediatrics"] = scores.get("pediatrics", 0.0) + moved
        if "pregnant" in population:
            for code in self.routing.get("pregnancy_to_obstetrics", []):
                if code in scores:
                    scores["obstetrics"] = scores.get("obstetrics", 0.0) + scores[code] * 0.8
                    scores[code] *= 0.2
        declared = sex or ("male" if "male" in population and "female" not in population else None)
        declared = declared or ("female" if "female" in population and "male" not in population else None)
        if "pregnant" in population:
            declared = "female"
        for code in (self.routing.get("excluded_for_sex") or {}).get(declared or "", []):
            scores.pop(code, None)
        return scores


def age_in(text: str) -> Optional[float]:
    """The patient's age as written (5岁, 3个月, 10天大), in years; None when not said."""
    match = AGE.search(text or "")
    if not match:
        return None
    years, months, days = match.groups()
    if years:
        return float(years)
    if months:
        return int(months) / 12.0
    return 0.05 if days else None


def _digest(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256(MODEL_VERSION.encode())
    for path in paths:
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()[:16]


def example_files(directory: Path = TRIAGE_DATA) -> List[Path]:
    return sorted(directory.glob("examples*.yml"))


def load_examples(files: Optional[Sequence[Path]] = None) -> List[dict]:
    examples: List[dict] = []
    for path in example_files() if files is None else files:
        examples.extend(_load(path).get("examples") or [])
    return examples


def model_path(
    knowledge_dir: Path = KNOWLEDGE_DIR, examples_dir: Path = TRIAGE_DATA, cache_dir: Path = CACHE_DIR
) -> Path:
    """Where the model for the current data files lives."""
    return cache_dir / f"triage-{_digest([*knowledge_files(knowledge_dir), *example_files(examples_dir)])}.pkl"


def build(
    knowledge_dir: Path = KNOWLEDGE_DIR,
    examples_dir: Path = TRIAGE_DATA,
    routing_file: Path = ROUTING_FILE,
    cache_dir: Optional[Path] = CACHE_DIR,
) -> DepartmentRanker:
    """The ranker over the data files, its model trained once and cached while the files are unchanged."""
    knowledge = Knowledge(load_knowledge(knowledge_dir))
    routing = _load(routing_file)
    files = example_files(examples_dir)
    examples = load_examples(files)
    model = None
    cache = model_path(knowledge_dir, examples_dir, cache_dir) if cache_dir else None
    if cache is not None and cache.exists():
        try:
            with open(cache, "rb") as handle:
                model = pickle.load(handle)
        except Exception:  # a cache from another library version: train again
            model = None
    if model is None:
        texts, labels = _training_set(knowledge, examples)
        if len(set(labels)) >= 2:
            model = train_model(texts, labels)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                temporary = cache.with_suffix(f".{os.getpid()}.tmp")  # processes may build at the same time
                with open(temporary, "wb") as handle:
                    pickle.dump(model, handle)
                temporary.replace(cache)
    return DepartmentRanker(knowledge, routing, model)


_RANKER_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _built() -> DepartmentRanker:
    return build()


def ranker() -> DepartmentRanker:
    """The process's ranker, built once even when a warm-up thread and a request ask at the same time."""
    with _RANKER_LOCK:
        return _built()


def warm_up_in_background() -> None:
    """Load the model now, off the caller's thread: the first patient should not wait for it."""
    threading.Thread(target=ranker, name="triage-warm-up", daemon=True).start()


def main() -> int:
    """Train the model for the current data files unless it exists; print where it is."""
    import time

    started = time.monotonic()
    terms = len(build().knowledge.weights)
    current = model_path()
    for stale in CACHE_DIR.glob("triage-*.pkl"):  # models of earlier data: never loaded again
        if stale != current:
            stale.unlink()
    print(f"triage model: {current.relative_to(PROJECT_ROOT)} ({terms} terms, {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
