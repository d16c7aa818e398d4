"""Two labs' runs side by side: the accuracy of every (model, seed) that both ran, and how far apart they are.

    .venv/bin/python scripts/compare_runs.py docs/lab/runs.jsonl docs/lab/compiled/runs.jsonl \
        --names eager compiled --out docs/lab/compiled/compare.md

Made to show whether a change in how runs are carried out (``--compile``) changes what they find: the same
model, seed, data and recipe, trained both ways. Runs of a model or seed that only one lab has are left out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from deepstack.utils.tables import markdown_table


def load(path: Path) -> dict[tuple[str, int], dict]:
    runs = {}
    for line in path.read_text().splitlines():
        run = json.loads(line)
        runs[run["key"], run["seed"]] = run
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="runs.jsonl of the first lab")
    parser.add_argument("b", type=Path, help="runs.jsonl of the second lab")
    parser.add_argument("--names", nargs=2, default=["a", "b"], help="the two labs' names in the table")
    parser.add_argument("--out", type=Path, default=None, help="write the table here too (Markdown)")
    args = parser.parse_args()
    a, b = load(args.a), load(args.b)
    both = [key for key in b if key in a]
    if not both:
        sys.exit(f"no (model, seed) is in both {args.a} and {args.b}: nothing to compare")
    rows, gaps = [], {"fine": [], "coarse": []}
    for key, seed in both:
        cells = [key, seed]
        for metric in gaps:
            x, y = a[key, seed][f"{metric}_accuracy"], b[key, seed][f"{metric}_accuracy"]
            gaps[metric].append(y - x)
            cells += [f"{x:.1%}", f"{y:.1%}", f"{(y - x) * 100:+.1f}"]
        rows.append(cells)
    first, second = args.names
    header = ["model", "seed"] + [column for metric in gaps
                                  for column in (f"{metric} {first}", f"{metric} {second}", f"{metric} gap (pts)")]
    command = ".venv/bin/python scripts/compare_runs.py " + shlex.join(sys.argv[1:])
    summary = "; ".join(
        f"{metric}: mean gap {statistics.fmean(values) * 100:+.2f} points, largest |gap| "
        f"{max(map(abs, values)) * 100:.1f}" for metric, values in gaps.items())
    text = "\n".join([f"# {first} vs {second}: the same runs", "", f"Command: `{command}`  ",
                      f"{len(both)} runs in both labs. {summary}.", "", markdown_table(header, rows), ""])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
