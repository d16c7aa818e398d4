"""The lab's report: lab.md (the claims, then one table per group) and lab.png (fine and coarse accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

from ...utils.plots import saved_figure
from ...utils.tables import markdown_table
from ..tasks.finedetail import ANSWERS, QUESTIONS
from .stats import unseparated


def write_report(results: dict, command: str, folder: Path) -> dict:
    """lab.json, lab.md and lab.png in ``folder``; ``results`` with the command that made them."""
    results["command"] = command
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lab.json").write_text(json.dumps(results, indent=2))
    (folder / "lab.md").write_text(report(results))
    plot(results, folder / "lab.png")
    return results


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.1%} ± {stat['std']:.1%}"


def _preamble(results: dict) -> list[str]:
    recipe = results["recipe"]
    return [
        "# deepstack lab",
        "",
        f"Command: `{results['command']}`  ",
        f"Compute: {results['compute_seconds'] / 60:.0f} minutes of training and evaluation in all "
        f"({len(results['seeds'])} seeds: {', '.join(map(str, results['seeds']))}).  ",
        f"Recipe (every arm): {recipe['steps']} steps of batch {recipe['batch_size']}, lr {recipe['lr']:g} "
        f"(encoder {recipe['vision_lr']:g}), data {recipe['sizes']}; tiny CLIP-style encoder {recipe['vision_size']}, "
        f"tiny Llama-style LLM {recipe['llm_size']}, both from scratch. Accuracy: exact match on the test split, "
        "mean ± sample std over the seeds.",
        "",
        *([] if results.get("complete", True) else [
            "**Not finished**: some arms have fewer seeds than asked (their seeds are listed) or none yet; the lab "
            "resumes with the same command.", ""]),
    ]


def _claims(claims: list[dict]) -> list[str]:
    rows = [(claim["claim"], f"{claim['difference']:+.1%}", f"{claim['spread']:.1%}",
             "NO" if claim["verdict"] == "no" else claim["verdict"]) for claim in claims]
    lines = ["## The paper's claims, checked", "",
             markdown_table(["claim", "difference (mean)", "spread of the difference", "holds"], rows)]
    if any(claim["verdict"] == "not separated" for claim in claims):
        lines += ["", "*not separated*: the difference stays within the spread (at least 2 points), so these runs "
                  "neither show the claim nor refute it; the tables below name the questions that cannot tell the "
                  "arms apart."]
    return lines


def _asked(rows: list[dict]) -> list[str]:
    """The task's questions that the group's runs were asked, in the task's order."""
    return [q for q in QUESTIONS if any(row["summary"] and q in row["summary"] for row in rows)]


def _arm_cells(row: dict, seeds: list[int], questions: list[str]) -> list[str]:
    """One arm's cells; an arm short of seeds names the seeds it has, an arm with none has empty cells."""
    label = row["label"]
    if len(row["seeds_done"]) != len(seeds):
        label += f" (seeds {', '.join(map(str, row['seeds_done'])) or 'none yet'})"
    summary = row["summary"]
    if summary is None:
        return [label] + [""] * (len(questions) + 5)
    return [label, row["llm_image_tokens"], row["visual_tokens_seen"], _cell(summary["fine"]),
            _cell(summary["coarse"]), *(_cell(summary[q]) if q in summary else "" for q in questions),
            f"{row['train_seconds']:.0f}"]


def _group(group: dict, seeds: list[int]) -> list[str]:
    questions = _asked(group["rows"])
    header = ["arm", "LLM context", "visual tokens seen", "fine", "coarse", *questions, "train s"]
    rows = [_arm_cells(row, seeds, questions) for row in group["rows"]]
    lines = [f"## {group['title']}", "", markdown_table(header, rows)]
    flat = unseparated(group["rows"])
    if flat:
        lines += ["", "Questions on which these arms do not differ (means within the seeds' spread, at least 2 "
                  "points): " + "; ".join(f"{question} {low:.1%} to {high:.1%} (chance {1 / len(ANSWERS[question]):.0%})"
                                          for question, low, high in flat) + "."]
    return lines


def report(results: dict) -> str:
    """lab.md: how the lab was run, the claims checked, then each group's table."""
    lines = _preamble(results) + _claims(results["claims"])
    for group in results["groups"].values():
        lines += ["", *_group(group, results["seeds"])]
    lines += ["", "![lab](lab.png)", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """One panel per group: fine and coarse accuracy per arm, mean ± std bars with each seed as a dot."""
    groups = list(results["groups"].values())
    columns = min(3, len(groups))
    rows = (len(groups) + columns - 1) // columns
    with saved_figure(path, figsize=(5.2 * columns, 3.8 * rows), dpi=100) as figure:
        axes = figure.subplots(rows, columns, squeeze=False)
        for axis, group in zip(axes.flat, groups):
            _panel(axis, group)
        axes.flat[0].legend(fontsize=7)
        for axis in list(axes.flat)[len(groups):]:
            axis.axis("off")


def _panel(axis, group: dict) -> None:
    rows = [row for row in group["rows"] if row["summary"] is not None]
    labels = [row["label"] for row in rows]
    for offset, (metric, colour) in enumerate((("fine", "tab:blue"), ("coarse", "tab:orange"))):
        xs = [index + (offset - 0.5) * 0.38 for index in range(len(labels))]
        means = [row["summary"][metric]["mean"] for row in rows]
        stds = [row["summary"][metric]["std"] for row in rows]
        axis.bar(xs, means, 0.38, yerr=stds, capsize=3, color=colour, alpha=0.8, label=metric)
        for x, row in zip(xs, rows):
            values = row["summary"][metric]["values"]
            axis.scatter([x] * len(values), values, s=8, color="black", zorder=3)
    axis.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=7)
    axis.set_ylim(0, 1.05)
    axis.set_title(group["title"], fontsize=8)
    axis.set_ylabel("test accuracy")
