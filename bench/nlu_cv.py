"""Intent cross-validation on the project's own NLU data: how well the pipeline in config.yml generalises.

A model's score on its own training data says little; k-fold cross-validation trains on k-1 folds and scores
the held-out fold, so every example is predicted by a model that never saw it. This runs Rasa's own
cross-validation (`rasa test nlu --cross-validation`) rather than a re-implementation, then reads the intent
report it writes and prints per-intent precision/recall/F1, macro-F1, weighted-F1, accuracy and the most
frequent confusions. Target: macro-F1 >= 0.95 (macro, so that a small intent counts as much as a big one).

Rasa shuffles the folds without a fixed seed, so repeated runs differ by a little.

    .venv/bin/python -m bench.nlu_cv                 # 3 folds (trains 3 NLU models: minutes of both cores)
    .venv/bin/python -m bench.nlu_cv --folds 5
    .venv/bin/python -m bench.nlu_cv --report-dir D  # only read the results of an earlier run in D
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    FAKE_NOW,
    PROJECT_ROOT,
    RASA,
    Process,
    base_env,
    format_table,
    machine_info,
    raise_on_sigterm,
    verdict,
    write_json,
)

NAME = "nlu_cv"
TARGET_MACRO_F1 = 0.95
TOP_CONFUSIONS = 10
SUMMARY_KEYS = ("accuracy", "macro avg", "weighted avg", "micro avg")


def run_cross_validation(folds: int, out_dir: Path, timeout: Optional[float]) -> float:
    """Run Rasa's NLU cross-validation into out_dir; returns the wall time in seconds."""
    cmd = [
        RASA,
        "test",
        "nlu",
        "--nlu",
        "data/nlu",
        "--config",
        "config.yml",
        "--cross-validation",
        "--folds",
        str(folds),
        "--out",
        str(out_dir),
    ]
    log_path = out_dir.parent / "rasa_test_nlu.log"
    print(f"running: {' '.join(cmd[1:])}  (log: {log_path})", flush=True)
    start = time.monotonic()
    process = Process("rasa test nlu", cmd, PROJECT_ROOT, base_env({"HOSPITAL_FAKE_NOW": FAKE_NOW}), log_path)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"rasa test nlu did not finish within --timeout {timeout:.0f} s; stopped it") from None
    finally:
        process.stop()
    wall = time.monotonic() - start
    if code != 0:
        raise RuntimeError(f"rasa test nlu exited with code {code}; log {log_path}:\n{process.log_tail()}")
    return wall


def find_one(directory: Path, filename: str) -> Optional[Path]:
    found = sorted(directory.rglob(filename), key=lambda p: len(p.parts))
    return found[0] if found else None


def parse_report(report: Dict[str, Any]) -> Dict[str, Any]:
    """Per-intent rows and the summary figures of a Rasa/sklearn intent report (intent_report.json)."""
    intents = []
    for label, row in report.items():
        if label in SUMMARY_KEYS or not isinstance(row, dict):
            continue
        intents.append(
            {
                "intent": label,
                "precision": float(row["precision"]),
                "recall": float(row["recall"]),
                "f1": float(row["f1-score"]),
                "support": int(row["support"]),
                "confused_with": dict(row.get("confused_with") or {}),
            }
        )
    intents.sort(key=lambda r: (r["f1"], r["intent"]))
    if isinstance(report.get("accuracy"), (int, float)):
        accuracy = float(report["accuracy"])
    elif "micro avg" in report:  # sklearn reports micro avg instead when predictions include unknown labels
        accuracy = float(report["micro avg"]["f1-score"])
    else:
        accuracy = None
    return {
        "intents": intents,
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "weighted_f1": float(report["weighted avg"]["f1-score"]),
        "accuracy": accuracy,
        "examples": sum(r["support"] for r in intents),
    }


def confusions_from_errors(errors: List[Dict[str, Any]], top: int) -> List[Dict[str, Any]]:
    """The most frequent (true intent -> predicted intent) pairs in intent_errors.json, with an example."""
    pairs: Counter = Counter()
    example: Dict[Tuple[str, str], str] = {}
    for error in errors:
        predicted = (error.get("intent_prediction") or {}).get("name") or "None"
        key = (str(error.get("intent")), str(predicted))
        pairs[key] += 1
        example.setdefault(key, str(error.get("text", "")))
    return [
        {"intent": true, "predicted": pred, "count": count, "example": example[(true, pred)]}
        for (true, pred), count in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    ]


def confusions_from_report(intents: List[Dict[str, Any]], top: int) -> List[Dict[str, Any]]:
    """Fallback when there is no errors file: the report's own `confused_with` counts."""
    rows = [
        {"intent": r["intent"], "predicted": other, "count": int(count), "example": None}
        for r in intents
        for other, count in r["confused_with"].items()
    ]
    rows.sort(key=lambda r: (-r["count"], r["intent"], r["predicted"]))
    return rows[:top]


def summarise(results_dir: Path, top: int = TOP_CONFUSIONS) -> Dict[str, Any]:
    report_path = find_one(results_dir, "intent_report.json")
    if report_path is None:
        raise FileNotFoundError(f"no intent_report.json under {results_dir}")
    summary = parse_report(json.loads(report_path.read_text(encoding="utf-8")))
    errors_path = find_one(results_dir, "intent_errors.json")
    if errors_path is not None:
        errors = json.loads(errors_path.read_text(encoding="utf-8"))
        summary["errors"] = len(errors)
        summary["confusions"] = confusions_from_errors(errors, top)
        summary["confusions_source"] = "intent_errors.json"
    else:
        summary["errors"] = sum(sum(r["confused_with"].values()) for r in summary["intents"])
        summary["confusions"] = confusions_from_report(summary["intents"], top)
        summary["confusions_source"] = "intent_report.json confused_with (no errors file)"
    summary["report_path"] = str(report_path)
    return summary


def print_summary(summary: Dict[str, Any], folds: Optional[int], wall: Optional[float]) -> None:
    print()
    runs = f"{folds} folds" if folds else f"an earlier run: {summary['report_path']}"
    print(f"Intent cross-validation ({runs}), per intent, weakest first")
    print(
        format_table(
            ["intent", "precision", "recall", "F1", "support"],
            [[r["intent"], r["precision"], r["recall"], r["f1"], r["support"]] for r in summary["intents"]],
        )
    )
    print()
    print(
        format_table(
            ["summary", "value"],
            [
                ["macro-F1", summary["macro_f1"]],
                ["weighted-F1", summary["weighted_f1"]],
                ["accuracy", summary["accuracy"]],
                ["examples", summary["examples"]],
                ["misclassified", summary["errors"]],
                ["wall time (s)", round(wall, 1) if wall is not None else None],
            ],
        )
    )
    print()
    print(f"Top {TOP_CONFUSIONS} confusions (from {summary['confusions_source']})")
    if summary["confusions"]:
        print(
            format_table(
                ["true intent", "predicted", "count", "example"],
                [[c["intent"], c["predicted"], c["count"], c["example"]] for c in summary["confusions"]],
            )
        )
    else:
        print("  none")
    print()
    ok = summary["macro_f1"] >= TARGET_MACRO_F1
    print(f"target macro-F1 >= {TARGET_MACRO_F1:.2f}: {summary['macro_f1']:.3f}  {verdict(ok)}")


def run(folds: int = 3, report_dir: Optional[Path] = None, keep: Optional[Path] = None, timeout: float = 0) -> Dict:
    """Run (or only read) the cross-validation; print the tables; write bench/out/nlu_cv.json."""
    record: Dict[str, Any] = {"benchmark": NAME, "machine": machine_info(), "folds": folds}
    wall: Optional[float] = None
    if report_dir is not None:
        record["folds"] = None
        summary = summarise(report_dir)
    else:
        if folds < 2:
            raise ValueError("--folds must be at least 2")
        work = Path(tempfile.mkdtemp(prefix="bench-nlu-cv-"))
        try:
            results = work / "results"
            wall = run_cross_validation(folds, results, timeout or None)
            summary = summarise(results)
            if keep is not None:
                shutil.copytree(results, keep, dirs_exist_ok=True)
                summary["report_path"] = str(keep / Path(summary["report_path"]).relative_to(results))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    record.update(summary)
    record["wall_time_s"] = wall
    record["target"] = {"macro_f1_min": TARGET_MACRO_F1, "passed": summary["macro_f1"] >= TARGET_MACRO_F1}
    print_summary(summary, record["folds"], wall)
    print(f"\nJSON: {write_json(NAME, record)}")
    return record


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nlu_cv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds (default 3)")
    parser.add_argument("--report-dir", type=Path, help="skip the run; read intent_report.json found under this dir")
    parser.add_argument("--keep", type=Path, help="copy Rasa's result files (reports, plots) to this directory")
    parser.add_argument("--timeout", type=float, default=0, help="stop the run after this many seconds (0: none)")
    args = parser.parse_args(argv)
    raise_on_sigterm()
    run(args.folds, args.report_dir, args.keep, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
