"""Evaluation-time probes of the lab's trained local-detail models (docs/lab/v4/probes.md).

    .venv/bin/python scripts/lab_probes.py --lab runs/lab-v4 --out docs/lab/v4

Evaluates the models the lab saved under ``--lab`` with one setting changed (``deepstack.research.lab.probes``:
``layout`` swaps the Sampling2D layout of the Table 5 arms, ``stacks`` injects only the first k stacks of the
4-stack DeepStack-L, ``detail`` evaluates the ``levels`` models on images that hold only what the global view
holds), reads how far the gated arms' gates opened, and writes probes.json and probes.md to
``--out``; ``--report-only`` writes the Markdown again from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from deepstack.research.lab.probes import (  # noqa: E402
    PROBES, gate_openings, gates_table, probe_questions, probe_table, run_probe)
from deepstack.research.tasks.localdetail import fine_ceiling  # noqa: E402


def write(results: dict, out: Path) -> None:
    ceilings = ", ".join(f"{count}: {fine_ceiling(count):.0%}" for count in range(1, 5))
    lines = ["# Probes of the local-detail models", "",
             f"Command: `{results['command']}`  ",
             "The lab's trained models (docs/lab/v4/lab.md), evaluated on the test split with one setting changed; "
             "the weights are not touched. Fine accuracy, mean ± sample std over the seeds; chance is 20%, and the "
             f"best a model can do seeing k of a tile's four quarters is {ceilings} (`fine_ceiling`). The cell "
             "where the evaluated setting is the trained one re-scores the lab's own model.", ""]
    for name in results["probes"]:
        lines += [f"## {PROBES[name].title}", "", probe_table(name, results["rows"]),
                  "Per question (mean over the seeds):", "", probe_questions(name, results["rows"])]
    if results.get("gates"):
        lines += ["## How far the gates opened (`gate` group)", "",
                  "`|tanh(g_k)|` of the trained models, per stack (1 would be the paper's plain addition; the gates "
                  "start at 0):", "", gates_table(results["gates"])]
    out.mkdir(parents=True, exist_ok=True)
    (out / "probes.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="runs/lab-v4", help="the lab's --out folder (its models and data)")
    parser.add_argument("--out", default="docs/lab/v4")
    parser.add_argument("--probes", nargs="+", default=list(PROBES), choices=list(PROBES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0: torch's default")
    parser.add_argument("--report-only", action="store_true", help="write probes.md again from probes.json")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report_only:
        results = json.loads((out / "probes.json").read_text(encoding="utf-8"))
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        rows = [row for name in args.probes for row in run_probe(name, args.lab, tuple(args.seeds))]
        command = ".venv/bin/python scripts/lab_probes.py " + shlex.join(sys.argv[1:])
        results = {"command": command.strip(), "probes": args.probes, "seeds": args.seeds, "rows": rows,
                   "gates": gate_openings(args.lab, tuple(args.seeds))}
        out.mkdir(parents=True, exist_ok=True)
        (out / "probes.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    write(results, out)
    print(f"probes: {out / 'probes.md'}")


if __name__ == "__main__":
    main()
