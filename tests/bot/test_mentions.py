"""Departments and doctors named in a message, as a patient types them."""

from __future__ import annotations

import jieba

from bot.catalog import find_department
from bot.mentions import DEPARTMENT, DOCTOR, finder


def _found(text: str, boundaries=None):
    return [(m.kind, m.text, m.code, m.exact) for m in finder().find(text, boundaries)]


def _words(text: str) -> set:
    edges, offset = {0}, 0
    for word in jieba.lcut(text):
        offset += len(word)
        edges.add(offset)
    return edges


def test_names_and_aliases_longest_first() -> None:
    assert _found("我想挂明天上午心内科的号") == [(DEPARTMENT, "心内科", "cardiology", True)]
    assert _found("神经外科还是外科") == [
        (DEPARTMENT, "神经外科", "neurosurgery", True),
        (DEPARTMENT, "外科", "general_surgery", True),
    ]
    assert _found("帮我约王建国医生") == [(DOCTOR, "王建国", "王建国", True)]


def test_homophone_typos_of_long_terms() -> None:
    assert _found("新内科明天有号吗") == [(DEPARTMENT, "新内科", "cardiology", False)]
    assert _found("消话内科") == [(DEPARTMENT, "消话内科", "gastroenterology", False)]
    assert _found("约王建果医生") == [(DOCTOR, "王建果", "王建国", False)]
    assert find_department("想看新内科") == "cardiology"


def test_short_terms_only_exactly() -> None:
    assert _found("耳科在几楼") == []  # sounds like 儿科 (pediatrics): not guessed
    assert _found("儿科在几楼") == [(DEPARTMENT, "儿科", "pediatrics", True)]


def test_two_character_doctor_names_must_be_words() -> None:
    text = "挂号高峰期人多吗"
    assert _found(text, _words(text)) == []
    text = "高峰主任明天在吗"
    assert _found(text, _words(text)) == [(DOCTOR, "高峰", "高峰", True)]


def test_emoji_and_latin_do_not_shift_offsets() -> None:
    text = "😀ok心血管内科"
    [mention] = finder().find(text)
    assert text[mention.start : mention.end] == "心血管内科"
