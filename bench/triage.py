"""Triage: department recommendation on public patient text, and red-flag detection on the project's own set.

Runs the staff command (`python -m bot.triage`, one process, JSON lines in and out) exactly as staff would, over:
- ../shared/eval/departments_public.jsonl (read from there at run time, never copied or trained on): top-1 and
  top-3 accuracy overall and per source, recall per label (a hit at top-1 is a recommendation whose first
  department is in the row's `accept`);
- bench/data/red_flags.jsonl (the project's own set: positives for every red-flag category, each paired with a
  look-alike that is not an emergency: negated, history, resolved, mild, informational, fiction, normal
  readings): red-flag recall and precision (red_flag = level 1-2), overall and per category, and the misses.
Also the ranker's cross-validated top-1/top-3 on the project's own examples (data/triage/examples.yml), which
is what tuning may look at.

Targets: red-flag recall 1.0 with precision >= 0.9; department top-1 >= 0.85 and top-3 >= 0.95.

    .venv/bin/python -m bench.triage [--eval PATH] [--redflags PATH] [--show 15]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PROJECT_ROOT, PYTHON, base_env, format_table, machine_info, verdict, write_json

NAME = "triage"
EVAL_FILE = PROJECT_ROOT.parent / "shared" / "eval" / "departments_public.jsonl"
RED_FLAG_FILE = PROJECT_ROOT / "bench" / "data" / "red_flags.jsonl"
TARGETS = {"red_flag_recall": 1.0, "red_flag_precision": 0.9, "top1": 0.85, "top3": 0.95}


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def run_command(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Feed rows to `python -m bot.triage` and return its output lines, one per row, in order."""
    payload = "".join(
        json.dumps({k: row[k] for k in ("text", "age", "sex") if row.get(k) is not None}, ensure_ascii=False) + "\n"
        for row in rows
    )
    done = subprocess.run(
        [PYTHON, "-m", "bot.triage"],
        input=payload,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=base_env(),
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bot.triage exited {done.returncode}:\n{done.stderr[-3000:]}")
    out = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    if len(out) != len(rows):
        raise RuntimeError(f"bot.triage answered {len(out)} lines for {len(rows)} inputs")
    return out


def departments_report(rows: Sequence[Dict[str, Any]], answers: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    by_source: Dict[str, Counter] = defaultdict(Counter)
    by_label: Dict[str, Counter] = defaultdict(Counter)
    for row, answer in zip(rows, answers):
        codes = [d["code"] for d in answer.get("departments", [])]
        accept = set(row["accept"])
        top1 = bool(codes[:1]) and codes[0] in accept
        top3 = any(code in accept for code in codes[:3])
        for bucket in (by_source[row["source"]], by_source["all"], by_label[row["label"]]):
            bucket["n"] += 1
            bucket["top1"] += top1
            bucket["top3"] += top3
    table = {
        source: {"n": c["n"], "top1": c["top1"] / c["n"], "top3": c["top3"] / c["n"]} for source, c in by_source.items()
    }
    labels = {
        label: {"n": c["n"], "recall_top1": c["top1"] / c["n"], "recall_top3": c["top3"] / c["n"]}
        for label, c in by_label.items()
    }
    return {"sources": table, "labels": labels}


def red_flag_report(rows: Sequence[Dict[str, Any]], answers: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    tp = fp = fn = 0
    per_category: Dict[str, Counter] = defaultdict(Counter)
    misses, false_alarms = [], []
    for row, answer in zip(rows, answers):
        predicted = bool(answer.get("red_flag"))
        actual = bool(row["red_flag"])
        category = row.get("category") or "ordinary"
        per_category[category]["n"] += 1
        if actual and predicted:
            tp += 1
            per_category[category]["tp"] += 1
        elif actual:
            fn += 1
            per_category[category]["fn"] += 1
            misses.append(row["text"])
        elif predicted:
            fp += 1
            per_category[category]["fp"] += 1
            false_alarms.append(f"[{row.get('kind')}] {row['text']} -> {answer.get('reasons')}")
    recall = tp / (tp + fn) if tp + fn else None
    precision = tp / (tp + fp) if tp + fp else None
    return {
        "recall": recall,
        "precision": precision,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "per_category": {k: dict(v) for k, v in per_category.items()},
        "misses": misses,
        "false_alarms": false_alarms,
    }


def own_cross_validation(folds: int = 3) -> Dict[str, float]:
    """The ranker (knowledge + model) on held-out folds of the project's own examples."""
    import random

    from bot.triage import departments as dep

    knowledge = dep.Knowledge(dep.load_knowledge())
    routing = dep._load(dep.ROUTING_FILE)
    examples = dep.load_examples()
    order = list(range(len(examples)))
    random.Random(7).shuffle(order)
    hits1 = hits3 = 0
    for fold in range(folds):
        held = {i for n, i in enumerate(order) if n % folds == fold}
        train = [examples[i] for i in order if i not in held]
        texts, labels = dep._training_set(knowledge, train)
        ranker = dep.DepartmentRanker(knowledge, routing, dep.train_model(texts, labels))
        for i in held:
            example = examples[i]
            codes = [r.code for r in ranker.rank(example["text"], example.get("age"), example.get("sex")).departments]
            hits1 += bool(codes) and codes[0] == example["department"]
            hits3 += example["department"] in codes[:3]
    return {"n": len(examples), "top1": hits1 / len(examples), "top3": hits3 / len(examples)}


def run(eval_file: Path = EVAL_FILE, red_flag_file: Path = RED_FLAG_FILE, show: int = 15) -> Dict[str, Any]:
    record: Dict[str, Any] = {"machine": machine_info()}
    if eval_file.exists():
        rows = _read_jsonl(eval_file)
        start = time.monotonic()
        answers = run_command(rows)
        seconds = time.monotonic() - start
        report = departments_report(rows, answers)
        record["departments"] = {**report, "seconds": seconds, "file": str(eval_file)}
        print(f"\nDepartment recommendation on {eval_file.name}: {len(rows)} messages in {seconds:.1f} s")
        print(
            format_table(
                ["source", "n", "top-1", "top-3"],
                [[s, v["n"], v["top1"], v["top3"]] for s, v in sorted(report["sources"].items(), key=lambda i: i[0])],
            )
        )
        print("\nRecall per label (weakest first)")
        labels = sorted(report["labels"].items(), key=lambda item: item[1]["recall_top1"])
        print(
            format_table(
                ["label", "n", "top-1", "top-3"], [[k, v["n"], v["recall_top1"], v["recall_top3"]] for k, v in labels]
            )
        )
    else:
        print(f"{eval_file} not found: department accuracy NOT MEASURED")
    rows = _read_jsonl(red_flag_file)
    answers = run_command(rows)
    flags = red_flag_report(rows, answers)
    record["red_flags"] = flags
    print(f"\nRed flags on {red_flag_file.relative_to(PROJECT_ROOT)}: {len(rows)} messages")
    print(
        format_table(
            ["category", "n", "caught", "missed", "false alarms"],
            [
                [k, v.get("n", 0), v.get("tp", 0), v.get("fn", 0), v.get("fp", 0)]
                for k, v in sorted(flags["per_category"].items())
            ],
        )
    )
    print(f"recall {flags['recall']:.3f}  precision {flags['precision']:.3f}")
    for title, items in (("missed", flags["misses"]), ("false alarms", flags["false_alarms"])):
        if items:
            print(f"\n{title} ({len(items)}):")
            for item in items[:show]:
                print(f"  {item}")
    own = own_cross_validation()
    record["own_cross_validation"] = own
    print(
        f"\nRanker on held-out folds of data/triage/examples*.yml ({own['n']}): "
        f"top-1 {own['top1']:.3f}, top-3 {own['top3']:.3f}"
    )

    sources = record.get("departments", {}).get("sources", {})
    overall = sources.get("all")
    targets = {
        "red_flag_recall": {"value": flags["recall"], "target": 1.0, "passed": flags["recall"] == 1.0},
        "red_flag_precision": {
            "value": flags["precision"],
            "target": 0.9,
            "passed": flags["precision"] is not None and flags["precision"] >= 0.9,
        },
        "top1": {"value": overall and overall["top1"], "target": 0.85, "passed": overall and overall["top1"] >= 0.85},
        "top3": {"value": overall and overall["top3"], "target": 0.95, "passed": overall and overall["top3"] >= 0.95},
    }
    record["targets"] = targets
    print(
        "\n"
        + format_table(
            ["target", "value", "goal", "verdict"],
            [[k, v["value"], v["target"], verdict(v["passed"])] for k, v in targets.items()],
        )
    )
    print(f"JSON: {write_json(NAME, record)}")
    return record


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.triage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", type=Path, default=EVAL_FILE, help="departments_public.jsonl")
    parser.add_argument("--redflags", type=Path, default=RED_FLAG_FILE, help="the red-flag set")
    parser.add_argument("--show", type=int, default=15, help="misses and false alarms to print")
    args = parser.parse_args(argv)
    run(args.eval, args.redflags, args.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
