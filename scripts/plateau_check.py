"""Runs that stopped on a plateau (``deepstack lab --stop-on-plateau``) against the same runs trained to the budget:
where each stopped, where the rule replayed on the full run's curve says it would stop, whether its curve is the
full run's up to there, and what stopping cost on the test split and saved in time.

    .venv/bin/python scripts/plateau_check.py docs/lab/v4/runs.jsonl docs/lab/plateau/runs.jsonl \
        --out docs/lab/plateau/check.md

Made to show that the live rule is the replayed one (``stats.plateau_replay``, the lab report's "replayed on the
learning curves"): the same model, seed, data and recipe but for ``stop_on_plateau``, carried out the same way
(``--no-compile`` when the full runs were eager). Runs of a model or seed that only one lab has are left out.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

from deepstack.research.lab.stats import plateau_stop
from deepstack.utils.tables import markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_runs import emit, load  # noqa: E402  (a script beside this one)

CURVE_FIELDS = ("step", "fine", "coarse", "per_question")  # a curve point without its clock


def same_prefix(full: list[dict], stopped: list[dict]) -> bool:
    """Whether the stopped run's curve is the full run's up to the stop, point for point (the clock aside)."""
    return len(stopped) <= len(full) and all(
        {name: a[name] for name in CURVE_FIELDS} == {name: b[name] for name in CURVE_FIELDS}
        for a, b in zip(full, stopped))


def check(full: dict, stopped: dict) -> tuple[str, list[str]]:
    """The table of every (model, seed) in both labs and the summary lines."""
    both = [key for key in stopped if key in full]
    rows, agree, prefix, gaps, steps, budget, seconds = [], 0, 0, [], 0, 0, []
    for key, seed in both:
        a, b = full[key, seed], stopped[key, seed]
        replay, same = plateau_stop(a["curve"]), same_prefix(a["curve"], b["curve"])
        gap, ratio = b["fine_accuracy"] - a["fine_accuracy"], b["total_seconds"] / a["total_seconds"]
        agree, prefix = agree + (replay["step"] == b["steps"]), prefix + same
        gaps.append(gap)
        seconds.append(ratio)
        steps, budget = steps + b["steps"], budget + b["max_steps"]
        rows.append([key, seed, replay["step"], b["steps"], "yes" if same else "no", f"{a['fine_accuracy']:.1%}",
                     f"{b['fine_accuracy']:.1%}", f"{gap * 100:+.1f}", f"{ratio:.2f}"])
    header = ["model", "seed", "replayed stop", "live stop", "same curve to the stop", "test fine, full",
              "test fine, stopped", "gap (pts)", "run time, stopped / full"]
    summary = (f"{len(both)} runs in both labs. The live stop is the replayed one in {agree} of them, and the "
               f"stopped run's learning curve is the full run's up to its stop in {prefix}. The stopped runs did "
               f"{steps} of their budgets' {budget} steps ({1 - steps / budget:.0%} saved); on the test split their "
               f"fine accuracy is {statistics.fmean(gaps) * 100:+.2f} points from the full runs' on average "
               f"({min(gaps) * 100:+.1f} at worst). A run's time as each lab recorded it (on whatever machine it "
               f"ran), stopped / full: median {statistics.median(seconds):.2f}.")
    return summary, markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("full", type=Path, help="runs.jsonl of the lab that trained to the budget")
    parser.add_argument("stopped", type=Path, help="runs.jsonl of the lab that stopped on a plateau")
    parser.add_argument("--out", type=Path, default=None, help="write the table here too (Markdown)")
    args = parser.parse_args()
    full, stopped = load(args.full), load(args.stopped)
    missing = [f"{key} seed {seed}" for (key, seed), run in {**full, **stopped}.items() if not run.get("curve")]
    if missing:
        sys.exit(f"no learning curve in the runs of {', '.join(missing)}: both labs need one (--curve-every)")
    unstopped = [f"{key} seed {seed}" for (key, seed), run in stopped.items() if "max_steps" not in run]
    if unstopped:
        sys.exit(f"{args.stopped}: {len(unstopped)} run(s) (the first: {unstopped[0]}) record no steps done and "
                 "budget; give the runs.jsonl of a lab run with --stop-on-plateau second")
    if not any(key in full for key in stopped):
        sys.exit(f"no (model, seed) is in both {args.full} and {args.stopped}: nothing to compare")
    summary, table = check(full, stopped)
    command = ".venv/bin/python scripts/plateau_check.py " + shlex.join(sys.argv[1:])
    emit("\n".join(["# Stopping on a plateau, live and replayed", "", f"Command: `{command}`  ", summary, "",
                    table, ""]), args.out)


if __name__ == "__main__":
    main()
