"""Features of a message that carry meaning beyond the exact words the training data happened to contain.

Word and character n-grams only know what they have seen; a patient's next message often uses a word nobody wrote
before. These cues generalise:

- what the message names from the hospital's own lists (a department, a doctor: bot.mentions), and whether it
  looks like a mobile number, a bare number or a choice (第二个), Latin script, emoji, a question;
- its length (a one-character reply is rarely a complaint);
- the semantic radicals of its characters (疒 in 疼/痛/痒/疮: illness; 口 in 嗯/哦/呀/哈: spoken particles; 讠 in
  说/谢/请: speech), from JioNLP's character dictionary, as unigrams and bigrams;
- the sentiment of the message from JioNLP's lexicon (complaints are negative, thanks positive), in five buckets.

Measured on the project's own data (bench/nlu_cv.py): see README, "Intent cross-validation".
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Set

from bot import mentions

PHONE = re.compile(r"(?:\+?86|0086)?[\s-]*1[3-9]\d[\s-]?\d{4}[\s-]?\d{4}")
SPOKEN_PHONE = re.compile(r"[一幺二三四五六七八九零〇]{11}")
NUMBER_ONLY = re.compile(r"[0-9０-９一二三四五六七八九十两]+")
CHOICE = re.compile(r"(?:第|选|要)?[一二三四五六七八九1-9１-９](?:个|号|项)?")
LATIN_ONLY = re.compile(r"[A-Za-z\s'?!.,]+")
QUESTION_END = re.compile(r"[吗呢么嘛？?]\s*$")


def _is_emoji(char: str) -> bool:
    code = ord(char)
    return code >= 0x2600 and not (0x4E00 <= code <= 0x9FFF or 0xFF00 <= code <= 0xFFEF or 0x3000 <= code <= 0x303F)


@lru_cache(maxsize=1)
def _radicals() -> Dict[str, str]:
    from jionlp.dictionary.dictionary_loader import char_radical_loader

    return {char: info["radical"] for char, info in char_radical_loader().items()}


@lru_cache(maxsize=1)
def _sentiment() -> Callable[[str], float]:
    root = logging.getLogger()
    was_disabled, root.disabled = root.disabled, True  # JioNLP logs warnings about its own lexicon on load
    try:
        from jionlp.algorithm.sentiment.sentiment_analysis import LexiconSentiment

        analyse = LexiconSentiment()
        analyse("预热")  # loads the lexicon now, not on a patient's first message
    finally:
        root.disabled = was_disabled
    return analyse


def cues(text: str, boundaries: Optional[Set[int]] = None) -> List[str]:
    """The cue features of one message, as strings (a bag: order does not matter). `boundaries`: the word
    offsets of its tokens, as the entity extractor uses them (the finder then answers both from one scan)."""
    stripped = (text or "").strip()
    if not stripped:
        return ["empty"]
    out: List[str] = []
    for mention in mentions.finder().find(text, boundaries):
        out.append(f"names_{mention.kind}")
    if PHONE.search(stripped) or SPOKEN_PHONE.search(stripped):
        out.append("phone")
    if NUMBER_ONLY.fullmatch(stripped):
        out.append("number_only")
    if len(stripped) <= 4 and CHOICE.fullmatch(stripped):
        out.append("choice")
    if LATIN_ONLY.fullmatch(stripped):
        out.append("latin_only")
    if QUESTION_END.search(stripped):
        out.append("question")
    if any(_is_emoji(char) for char in stripped):
        out.append("emoji")
    length = len(stripped)
    out.append(f"len_{length}" if length < 6 else ("len_medium" if length < 16 else "len_long"))
    radicals = _radicals()
    found = [radicals.get(char, "") for char in stripped]
    out.extend(f"rad_{radical}" for radical in found if radical)
    out.extend(f"rad_{a}{b}" for a, b in zip(found, found[1:]) if a and b)
    out.append(f"sentiment_{min(4, int(_sentiment()(stripped) * 5))}")
    return out
