"""Triage from the command line, for staff and benchmarks.

    echo '{"text": "我爸突然嘴歪了说话不清", "age": 67}' | .venv/bin/python -m bot.triage

Reads JSON lines on stdin: {"text": ..., "age": optional years, "sex": optional "male"/"female"}; writes one JSON
line per input line: {"text", "level", "red_flag", "reasons", "departments": [{"code", "score"}, ...]}.
A line that cannot be read gets {"error": ..., "line": n} instead; the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Dict, Optional, TextIO

MAX_TEXT = 5000
SEXES = {"male": "male", "m": "male", "男": "male", "female": "female", "f": "female", "女": "female"}


class InputError(ValueError):
    pass


def _request(line: str) -> Dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"not JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(item, dict):
        raise InputError("expected a JSON object")
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InputError('"text" must be a non-empty string')
    if len(text) > MAX_TEXT:
        raise InputError(f'"text" is longer than {MAX_TEXT} characters')
    age: Optional[float] = item.get("age")
    if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age <= 130):
        raise InputError('"age" must be a number of years between 0 and 130')
    sex = item.get("sex")
    if sex is not None:
        if not isinstance(sex, str) or sex.strip().lower() not in SEXES:
            raise InputError('"sex" must be "male" or "female"')
        sex = SEXES[sex.strip().lower()]
    return {"text": text, "age": age, "sex": sex}


def run(stdin: TextIO, stdout: TextIO) -> int:
    # JioNLP prints a banner on import: keep stdout for JSON lines only (loads everything once, too).
    with contextlib.redirect_stdout(sys.stderr):
        from bot.triage import assess

        assess("预热")

    for number, line in enumerate(stdin, start=1):
        if not line.strip():
            continue
        try:
            request = _request(line)
            result: Dict[str, Any] = assess(request["text"], age=request["age"], sex=request["sex"]).as_dict()
        except InputError as error:
            result = {"error": str(error), "line": number}
        stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.stdin, sys.stdout))
