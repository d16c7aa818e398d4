"""Evaluation speed, batch 1 vs batch 16 (docs/bench/eval_speed.md).

    .venv/bin/python scripts/eval_speed.py --out docs/bench

Runs ``deepstack eval``'s path (``run_benchmark``) on the first ``--items`` questions of a sample benchmark with
SmolLM2-135M-Instruct and a small vision tower, ``--rounds`` paired rounds of batch 1 and batch 16, checks every
answer is the same at both, and writes eval_speed.json and eval_speed.md to ``--out`` (its work files, the
sample set and the predictions, go to ``--work``); ``--report-only`` writes the Markdown again from the JSON.
See ``deepstack.research.bench.eval_speed``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deepstack.research.bench.eval_speed import measure, write  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--work", default="runs/eval-speed")
    parser.add_argument("--task", default="docvqa")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0: torch's default")
    parser.add_argument("--report-only", action="store_true", help="write eval_speed.md again from eval_speed.json")
    args = parser.parse_args()
    if args.report_only:
        results = json.loads(Path(args.out, "eval_speed.json").read_text(encoding="utf-8"))
    else:
        results = measure(args.work, task=args.task, limit=args.items, rounds=args.rounds,
                          max_new_tokens=args.max_new_tokens, threads=args.threads or None)
        results["command"] = " ".join([".venv/bin/python scripts/eval_speed.py", *map(shlex.quote, sys.argv[1:])])
    write(results, args.out, results["command"])
    summary = results["summary"]
    print(Path(args.out, "eval_speed.md").read_text(encoding="utf-8"))
    print(f"batch 16 / batch 1: {summary['speedup']:.2f}x (target {summary['target']}x: "
          f"{'met' if summary['met'] else 'not met'})")


if __name__ == "__main__":
    main()
