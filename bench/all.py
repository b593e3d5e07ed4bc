"""Every benchmark in sequence (`make bench`, `python -m bench.all`), one after the other so that they do not
compete for the CPU, with a short summary at the end and in bench/out/all.json.

A benchmark that fails to run is reported and the next one still runs; the exit code is non-zero then.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import latency, nlu_cv, reminders, triage, wechat
from bench._common import format_table, machine_info, raise_on_sigterm, verdict, write_json


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=3, help="NLU cross-validation folds (default 3)")
    parser.add_argument("--turns", type=int, default=200, help="latency: measured turns per concurrency")
    parser.add_argument("--skip-baseline", action="store_true", help="latency: do not measure rasa init")
    parser.add_argument(
        "--only", choices=["nlu_cv", "latency", "triage", "wechat", "reminders"], action="append", help="run only these"
    )
    args = parser.parse_args(argv)
    raise_on_sigterm()

    steps: List[Tuple[str, Callable[[], Dict[str, Any]]]] = [
        ("nlu_cv", lambda: nlu_cv.run(folds=args.folds)),
        ("triage", lambda: triage.run()),
        ("wechat", lambda: wechat.run()),
        ("reminders", lambda: reminders.run(reminders.parse_args([]))),
        (
            "latency",
            lambda: latency.run(
                latency.parse_args(["--turns", str(args.turns)] + (["--skip-baseline"] if args.skip_baseline else []))
            ),
        ),
    ]
    results: Dict[str, Any] = {}
    rows = []
    for name, step in steps:
        if args.only and name not in args.only:
            continue
        print(f"\n=== {name} ===", flush=True)
        start = time.monotonic()
        try:
            record = step()
        except Exception as error:  # one failing benchmark must not hide the others' figures
            traceback.print_exc()
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            rows.append([name, "FAILED", round(time.monotonic() - start), str(error).splitlines()[0][:80]])
            continue
        targets = _targets(name, record)
        results[name] = {"targets": targets, "wall_s": time.monotonic() - start}
        passed = [t.get("passed") for t in targets.values()]
        overall = False if False in passed else (None if None in passed else True)
        rows.append([name, verdict(overall), round(time.monotonic() - start), f"see bench/out/{name}.json"])

    print("\n=== summary ===")
    print(format_table(["benchmark", "targets", "seconds", "details"], rows))
    print(f"JSON: {write_json('all', {'machine': machine_info(), 'benchmarks': results})}")
    return 1 if any("error" in r for r in results.values()) else 0


def _targets(name: str, record: Dict[str, Any]) -> Dict[str, Any]:
    if name == "nlu_cv":
        return {"macro_f1": {"value": record["macro_f1"], **record["target"]}}
    return record["targets"]


if __name__ == "__main__":
    sys.exit(main())
