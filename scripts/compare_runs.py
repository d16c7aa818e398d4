"""Two labs' runs side by side: the accuracy of every (model, seed) that both ran, how far apart they are, each
model's mean over those seeds, and (given both labs' lab.json) the claims' verdicts of each lab.

    .venv/bin/python scripts/compare_runs.py docs/lab/runs.jsonl docs/lab/compiled/runs.jsonl \
        --names eager compiled --reports docs/lab/lab.json docs/lab/compiled/lab.json \
        --out docs/lab/compiled/compare.md

Made to show whether a change in how runs are carried out (``--compile``, another machine) changes what they
find: the same model, seed, data and recipe, trained both ways; it also counts the pairs that are the same run to
the last bit and compares the runs' times. Runs of a model or seed that only one lab has are left out.
A change of rounding can tip a run that learns a question late to the other side of the budget, so a pair of
runs can be far apart while the model's seeds, taken together, are not: the per-model table shows that.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from deepstack.utils.tables import markdown_table

METRICS = ("fine", "coarse")


def load(path: Path) -> dict[tuple[str, int], dict]:
    runs = {}
    for line in path.read_text().splitlines():
        run = json.loads(line)
        runs[run["key"], run["seed"]] = run
    return runs


def pairs(a: dict, b: dict, names: list[str]) -> tuple[str, list[tuple[str, int]]]:
    """The table of every (model, seed) in both labs, with the summary of the gaps."""
    both = [key for key in b if key in a]
    rows, gaps = [], {metric: [] for metric in METRICS}
    for key, seed in both:
        cells = [key, seed]
        for metric in METRICS:
            x, y = a[key, seed][f"{metric}_accuracy"], b[key, seed][f"{metric}_accuracy"]
            gaps[metric].append(y - x)
            cells += [f"{x:.1%}", f"{y:.1%}", f"{(y - x) * 100:+.1f}"]
        rows.append(cells)
    first, second = names
    header = ["model", "seed"] + [column for metric in METRICS
                                  for column in (f"{metric} {first}", f"{metric} {second}", f"{metric} gap (pts)")]
    summary = "; ".join(
        f"{metric}: mean gap {statistics.fmean(values) * 100:+.2f} points, largest |gap| "
        f"{max(map(abs, values)) * 100:.1f}" for metric, values in gaps.items())
    same = sameness(a, b, both, names)
    return f"{len(both)} runs in both labs. {summary}. {same}\n\n{markdown_table(header, rows)}", both


def sameness(a: dict, b: dict, both: list[tuple[str, int]], names: list[str]) -> str:
    """How many pairs are the same run to the last bit (the same final training loss and test predictions' scores),
    and how long the second lab's runs took against the first's (a different machine, or a different execution)."""
    identical = sum(a[key]["final_train_loss"] == b[key]["final_train_loss"]
                    and a[key]["per_question"] == b[key]["per_question"] for key in both)
    ratios = sorted(b[key]["total_seconds"] / a[key]["total_seconds"] for key in both)
    first, second = names
    return (f"{identical} of the {len(both)} pairs end with the same training loss to the last digit and the same "
            f"scores. A run's time as each lab recorded it (on whatever machine it ran), {second} / {first}: "
            f"median {statistics.median(ratios):.2f} ({ratios[0]:.2f} to {ratios[-1]:.2f}).")


def per_model(a: dict, b: dict, both: list[tuple[str, int]], names: list[str]) -> str:
    """Each model's fine accuracy over the seeds both labs ran: every seed's value and the mean, per lab."""
    seeds: dict[str, list[int]] = {}
    for key, seed in both:
        seeds.setdefault(key, []).append(seed)
    rows = []
    for key, done in seeds.items():
        cells = [key, " ".join(map(str, done))]
        for runs in (a, b):
            values = [runs[key, seed]["fine_accuracy"] for seed in done]
            cells += [" / ".join(f"{value:.1%}" for value in values), f"{statistics.fmean(values):.1%}"]
        rows.append(cells)
    first, second = names
    header = ["model", "seeds", f"fine {first}", f"mean {first}", f"fine {second}", f"mean {second}"]
    return markdown_table(header, rows)


def verdicts(a: Path, b: Path, names: list[str]) -> str:
    """The claims of two lab reports (lab.json) side by side: each lab's difference, spread and verdict."""
    claims = [{claim["claim"]: claim for claim in json.loads(path.read_text())["claims"]} for path in (a, b)]
    rows, differ = [], 0
    for text, first in claims[0].items():
        second = claims[1].get(text)
        if second is None:
            continue
        differ += first["verdict"] != second["verdict"]
        rows.append([text] + [f"{claim['difference'] * 100:+.1f} ± {claim['spread'] * 100:.1f}: {claim['verdict']}"
                              for claim in (first, second)])
    header = ["claim"] + [f"{name}: difference ± spread (pts): verdict" for name in names]
    return f"{len(rows)} claims in both reports; {differ} with another verdict.\n\n{markdown_table(header, rows)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="runs.jsonl of the first lab")
    parser.add_argument("b", type=Path, help="runs.jsonl of the second lab")
    parser.add_argument("--names", nargs=2, default=["a", "b"], help="the two labs' names in the table")
    parser.add_argument("--reports", nargs=2, type=Path, default=None, metavar=("A_JSON", "B_JSON"),
                        help="the two labs' lab.json: compare their claims' verdicts too")
    parser.add_argument("--out", type=Path, default=None, help="write the tables here too (Markdown)")
    args = parser.parse_args()
    a, b = load(args.a), load(args.b)
    if not any(key in a for key in b):
        sys.exit(f"no (model, seed) is in both {args.a} and {args.b}: nothing to compare")
    first, second = args.names
    table, both = pairs(a, b, args.names)
    command = ".venv/bin/python scripts/compare_runs.py " + shlex.join(sys.argv[1:])
    parts = [f"# {first} vs {second}: the same runs", "", f"Command: `{command}`  ", table, "",
             "## Each model over the seeds both labs ran", "", per_model(a, b, both, args.names), ""]
    if args.reports:
        parts += ["## The claims", "", verdicts(*args.reports, args.names), ""]
    emit("\n".join(parts), args.out)


def emit(text: str, out: Path | None) -> None:
    """Print the report, and write it to ``out`` too when given."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
