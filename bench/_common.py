"""What every benchmark shares: paths, the environment of the processes it starts, stopping them for sure,
plain-text tables and the JSON record in bench/out/.

Benchmarks start long-lived servers (Rasa, the action server) and long jobs (cross-validation). Each one runs
in its own process group so that the whole group is stopped on normal exit, on an exception, on Ctrl-C and on
SIGTERM, and no server is left holding a port or a CPU core.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
import unicodedata
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = PROJECT_ROOT / "bench"
OUT_DIR = BENCH_DIR / "out"
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
RASA = str(VENV_BIN / "rasa") if (VENV_BIN / "rasa").exists() else "rasa"

# The fixed Monday morning the tests use (tests/conftest.py): the same slots exist on every run.
FAKE_NOW = "2026-11-23T09:00:00+08:00"


def base_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment the Makefile exports, plus `extra`."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("RASA_TELEMETRY_ENABLED", "false")
    env.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    env.update(extra or {})
    return env


def raise_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that `finally` blocks stop the servers (Ctrl-C already does)."""

    def _handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _handler)


class Process:
    """A subprocess in its own process group, its output in a log file; `stop()` ends the whole group."""

    def __init__(self, name: str, cmd: Sequence[str], cwd: Path, env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(
                self.cmd,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches its children too
            )

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.popen.wait(timeout=timeout)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def count_in_log(self, needle: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL to whatever is left after `grace` seconds."""
        if self.popen.poll() is not None:
            return
        pgid = self.popen.pid  # start_new_session: the group id is the leader's pid
        for sig, wait_for in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(timeout=wait_for)
                return
            except subprocess.TimeoutExpired:
                continue


def http_status(url: str, timeout: float = 2.0) -> Optional[int]:
    """The HTTP status of GET url, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return None


def wait_until(ready: Callable[[], bool], process: Process, timeout: float, what: str) -> float:
    """Poll `ready` until true; fail early if `process` exits. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not process.running():
            raise RuntimeError(
                f"{process.name} exited with code {process.popen.returncode} while waiting for {what}; "
                f"log {process.log_path}:\n{process.log_tail()}"
            )
        if ready():
            return time.monotonic() - start
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready within {timeout:.0f} s; log {process.log_path}:\n{process.log_tail()}")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: numeric columns right-aligned, text columns left-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        any(isinstance(row[i], (int, float)) for row in rows)
        and all(row[i] is None or isinstance(row[i], (int, float)) for row in rows)
        for i in range(len(headers))
    ]

    def line(row: List[str]) -> str:
        return "  ".join(_pad(value, widths[i], left=not numeric[i]) for i, value in enumerate(row)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _cell(value: Any) -> str:
    if isinstance(value, float):  # scores (0..1) with 3 decimals, milliseconds and rates with 1
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


def _width(text: str) -> int:
    """Display width: CJK characters take two columns in a terminal."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int, left: bool) -> str:
    gap = " " * (width - _width(text))
    return text + gap if left else gap + text


def verdict(ok: Optional[bool]) -> str:
    if ok is None:
        return "NOT MEASURED"
    return "PASS" if ok else "BELOW TARGET"


def git_revision() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info() -> Dict[str, Any]:
    """What the figures depend on: the machine and how busy it was when the run started."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
    }


def write_json(name: str, record: Dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path
