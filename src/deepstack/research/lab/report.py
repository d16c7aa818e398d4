"""The lab's report: lab.md (the claims, then one table per group), lab.png (fine and coarse accuracy) and, for
the groups whose runs have learning curves, lab-curves-GROUP.png."""

from __future__ import annotations

import json
from pathlib import Path

from ...utils.plots import saved_figure
from ...utils.tables import markdown_table
from ..recipe import PhaseTimer
from ..tasks import DEFAULT_TASK, get_task
from .stats import unseparated


def write_report(results: dict, command: str, folder: Path) -> dict:
    """lab.json, lab.md and lab.png in ``folder``; ``results`` with the command that made them."""
    results["command"] = command
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lab.json").write_text(json.dumps(results, indent=2))
    (folder / "lab.md").write_text(report(results))
    plot(results, folder / "lab.png")
    for name, group in results["groups"].items():
        if _has_curves(group):
            plot_curves(group, folder / f"lab-curves-{name}.png")
    return results


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.1%} ± {stat['std']:.1%}"


def _task(results: dict):
    return get_task(results["recipe"].get("task", DEFAULT_TASK))


def _preamble(results: dict) -> list[str]:
    recipe = results["recipe"]
    task = recipe.get("task", DEFAULT_TASK)
    extras = ""
    if recipe.get("projector_lr") is not None:
        extras += f", projector and stack weights at lr {recipe['projector_lr']:g}"
    if recipe.get("curve_every"):
        extras += (f"; learning curve on the validation split every {recipe['curve_every']} steps (train s leave "
                   "its evaluations out)")
    return [
        "# deepstack lab",
        "",
        f"Command: `{results['command']}`  ",
        *([] if task == DEFAULT_TASK else [f"Task: `{task}` (version {get_task(task).TASK_VERSION}, "
                                           "docs/finedetail.md), questions " + ", ".join(recipe["questions"]) + ".  "]),
        f"Compute: {results['compute_seconds'] / 60:.0f} minutes of training and evaluation in all "
        f"({len(results['seeds'])} seeds: {', '.join(map(str, results['seeds']))})"
        + ("" if results.get("wall_seconds") is None else
           f", {results['wall_seconds'] / 60:.0f} minutes of wall time (while at least one run was going)") + ".  ",
        f"Recipe (every arm): {recipe['steps']} steps of batch {recipe['batch_size']}, lr {recipe['lr']:g} "
        f"(encoder {recipe['vision_lr']:g}), data {recipe['sizes']}; tiny CLIP-style encoder {recipe['vision_size']}, "
        f"tiny Llama-style LLM {recipe['llm_size']}, both from scratch{extras}. Accuracy: exact match on the test "
        "split, mean ± sample std over the seeds.",
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


def _asked(rows: list[dict], task) -> list[str]:
    """The task's questions that the group's runs were asked, in the task's order."""
    return [q for q in task.QUESTIONS if any(row["summary"] and q in row["summary"] for row in rows)]


def _has_curves(group: dict) -> bool:
    return "equal_time_seconds" in group


def _arm_cells(row: dict, seeds: list[int], questions: list[str], curves: bool = False) -> list[str]:
    """One arm's cells; an arm short of seeds names the seeds it has, an arm with none has empty cells."""
    label = row["label"]
    if len(row["seeds_done"]) != len(seeds):
        label += f" (seeds {', '.join(map(str, row['seeds_done'])) or 'none yet'})"
    summary = row["summary"]
    if summary is None:
        return [label] + [""] * (len(questions) + 5 + 2 * curves)
    cells = [label, row["llm_image_tokens"], row["visual_tokens_seen"], _cell(summary["fine"]),
             _cell(summary["coarse"]), *(_cell(summary[q]) if q in summary else "" for q in questions),
             f"{row['train_seconds']:.0f}"]
    if curves:
        cells += [_cell(summary["fine_half_steps"]), _cell(row["fine_equal_time"])]
    return cells


def _group(name: str, group: dict, seeds: list[int], task) -> list[str]:
    questions = _asked(group["rows"], task)
    curves = _has_curves(group)
    header = ["arm", "LLM context", "visual tokens seen", "fine", "coarse", *questions, "train s"]
    if curves:
        header += ["fine, val, half the steps", f"fine, val, at {group['equal_time_seconds']:.0f} s"]
    rows = [_arm_cells(row, seeds, questions, curves) for row in group["rows"]]
    lines = [f"## {group['title']}", "", markdown_table(header, rows)]
    flat = unseparated(group["rows"], list(task.QUESTIONS))
    if flat:
        lines += ["", "Questions on which these arms do not differ (means within the seeds' spread, at least 2 "
                  "points): " + "; ".join(f"{question} {low:.1%} to {high:.1%} "
                                          f"(chance {1 / len(task.ANSWERS[question]):.0%})"
                                          for question, low, high in flat) + "."]
    if curves:
        lines += ["", f"Learning curves: validation accuracy during training. *Half the steps*: at half of each "
                  f"arm's steps (equal steps). *At {group['equal_time_seconds']:.0f} s*: at the training time (on the "
                  "curve's clock, evaluations left out) that the cheapest arm needed for its whole budget (equal "
                  "time: slower arms are read part-way through theirs). Interpolated linearly between the curve's "
                  f"points.", "", f"![learning curves](lab-curves-{name}.png)"]
    lines += _phases(group["rows"]) + _upgrades(group["rows"])
    return lines


def _phases(rows: list[dict]) -> list[str]:
    """Where the training time went (research.recipe.PhaseTimer), for the arms that measured it."""
    timed = [row for row in rows if "phase_seconds" in row]
    if not timed:
        return []
    phases = [name for name in PhaseTimer.PHASES if name in timed[0]["phase_seconds"]]
    def cell(seconds: dict, name: str) -> str:
        return f"{1000 * seconds[name]:.1f} ({seconds[name] / seconds['step']:.0%})"

    table = [[row["label"], f"{1000 * row['phase_seconds']['step']:.1f}",
              *(cell(row["phase_seconds"], name) for name in phases)] for row in timed]
    return ["", "Where a training step's time goes (ms per step, mean over the steps timed and the seeds):", "",
            markdown_table(["arm", "step", *phases], table)]


def _upgrades(rows: list[dict]) -> list[str]:
    """The switch of the upgraded arms: the loss on the same records just before and just after it, and the
    training loss of the first steps after it."""
    upgraded = [row for row in rows if "upgrade" in row]
    if not upgraded:
        return []
    table = [[row["label"], f"{row['upgrade']['steps_before']:.0f}", f"{row['upgrade']['loss_before_switch']:.4f}",
              f"{row['upgrade']['loss_after_switch']:.4f}",
              ", ".join(f"{loss:.3f}" for loss in row["upgrade"]["first_losses"])] for row in upgraded]
    return ["", "The switch (mean over the seeds): loss of the `none` model and of the model it became, on the same "
            "training records, before any step of the new one; then the training loss of its first steps:", "",
            markdown_table(["arm", "none steps", "loss before", "loss after", "first training losses"], table)]


def _plateau(replay: dict | None) -> list[str]:
    """What stopping runs on a plateau would have saved, replayed on the learning curves (``plateau_replay``)."""
    if not replay:
        return []
    return ["", f"Stopping on a plateau, replayed on the learning curves: a rule that stops a run once its validation "
            f"fine accuracy has not risen {100 * replay['gain']:g} point(s) above its best for {replay['patience']} "
            f"curve points in a row would have stopped {replay['stopped_early']} of these {replay['runs']} runs early "
            f"and saved {replay['steps_saved']:.0%} of their training steps; at the stop the validation fine accuracy "
            f"was {100 * replay['mean_loss']:.1f} points below the run's last point on average "
            f"({100 * replay['worst_loss']:.1f} at worst)."]


def _stopped(stopped: dict | None) -> list[str]:
    """How much the runs that stopped on a plateau saved (``stats.stopped_on_plateau``)."""
    if not stopped:
        return []
    return ["", f"Stopping on a plateau (`--stop-on-plateau`): each run stopped once its validation fine accuracy "
            f"had not risen {100 * stopped['gain']:g} point(s) above its best for {stopped['patience']} curve points "
            f"in a row; {stopped['stopped_early']} of these {stopped['runs']} runs stopped before their budget, after "
            f"{stopped['mean_share']:.0%} of it on average ({stopped['least_share']:.0%} at least), "
            f"{stopped['steps_saved']:.0%} of all their steps saved. Test scores are those of the model at the stop; "
            "accuracy at equal steps holds a stopped run at its last point."]


def _time_split(split: dict | None) -> list[str]:
    """Where the runs' time went, part by part (``stats.time_split``)."""
    if not split:
        return []
    total = sum(split["seconds"].values())
    rows = [[part, f"{seconds / 60:.1f}", f"{seconds / total:.1%}"] for part, seconds in split["seconds"].items()
            if seconds]
    return ["## Where the lab's time went", "",
            f"Summed over the {split['runs']} runs that timed their phases (`--time-phases`); the steps' parts are "
            "those of every step but the first (data: waiting for the batch; other: the loss, the projector's and "
            "the encoder's backward, clipping). Minutes of run time:", "",
            markdown_table(["part of a run", "minutes", "share"], rows + [["all", f"{total / 60:.1f}", "100.0%"]]),
            ""]


def report(results: dict) -> str:
    """lab.md: how the lab was run, the claims checked, then each group's table, then where its time went."""
    lines = (_preamble(results) + _claims(results["claims"]) + _plateau(results.get("plateau"))
             + _stopped(results.get("stopped")))
    for name, group in results["groups"].items():
        lines += ["", *_group(name, group, results["seeds"], _task(results))]
    lines += ["", *_time_split(results.get("time_split")), "![lab](lab.png)", ""]
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


def plot_curves(group: dict, path: Path) -> None:
    """A group's learning curves: validation fine accuracy against steps and against training time, each arm's
    mean over the seeds as a line and each seed faintly; an upgraded arm's switch is marked."""
    rows = [row for row in group["rows"] if "curves" in row]
    with saved_figure(path, figsize=(11, 3.8), dpi=100) as figure:
        by_step, by_time = figure.subplots(1, 2)
        for index, row in enumerate(rows):
            colour = f"C{index % 10}"
            for axis, x in ((by_step, "step"), (by_time, "train_seconds_so_far")):
                for curve in row["curves"]:
                    axis.plot([p[x] for p in curve], [p["fine"] for p in curve], color=colour, alpha=0.25, lw=0.8)
                points = list(zip(*row["curves"]))  # the seeds' points at each curve step
                mean_x = [sum(point[x] for point in seeds) / len(seeds) for seeds in points]
                mean_y = [sum(point["fine"] for point in seeds) / len(seeds) for seeds in points]
                axis.plot(mean_x, mean_y, color=colour, lw=1.6, label=row["label"] if x == "step" else None)
            if "upgrade" in row:
                by_step.axvline(row["upgrade"]["steps_before"], color=colour, ls=":", lw=1)
        by_time.axvline(group["equal_time_seconds"], color="grey", ls="--", lw=1, label="equal time")
        for axis, label in ((by_step, "optimizer step"), (by_time, "training seconds (evaluations left out)")):
            axis.set_xlabel(label)
            axis.set_ylabel("fine accuracy (validation)")
            axis.set_ylim(0, 1.05)
        by_step.legend(fontsize=7)
        by_time.legend(fontsize=7)
        figure.suptitle(group["title"], fontsize=9)
