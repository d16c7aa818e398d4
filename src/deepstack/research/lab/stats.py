"""Mean ± std over the seeds, accuracy at equal steps and at equal training time from the learning curves, and
the claims checked against them."""

from __future__ import annotations

import statistics
from dataclasses import asdict

import numpy as np

from ..recipe import PLATEAU_GAIN, PLATEAU_PATIENCE, PhaseTimer, Recipe, plateau_point
from ..tasks import DEFAULT_TASK, get_task
from .arms import CLAIMS, GROUPS, Arm, arms_of


def run_key(task: str, arm: Arm) -> str:
    """The key of an arm's runs in runs.jsonl: the model's identity, with the task in front unless it is the
    default task (whose runs were recorded before there were others)."""
    return arm.key if task == DEFAULT_TASK else f"{task}/{arm.key}"


def at(curve: list[dict], x: str, value: float, y: str = "fine") -> float:
    """``y`` of a learning curve at ``x`` (``step`` or ``train_seconds_so_far``) = ``value``, linearly
    interpolated between its points (held at the first and last point outside them)."""
    return float(np.interp(value, [point[x] for point in curve], [point[y] for point in curve]))


def plateau_stop(curve: list[dict]) -> dict:
    """Where stopping on a plateau (``Recipe.stop_on_plateau``) would have stopped a run: at its curve's
    ``plateau_point``, else at its last point. ``step`` and ``fine`` at the stop, and the ``final`` fine accuracy
    the run reached."""
    index = plateau_point(curve)
    stop = curve[-1 if index is None else index]
    return {"step": stop["step"], "fine": stop["fine"], "final": curve[-1]["fine"]}


def plateau_replay(groups: dict) -> dict | None:
    """``plateau_stop`` over every run with a learning curve in ``groups`` (each model once): how many runs it
    stops early, the share of all training steps it saves, and the mean and worst loss of validation fine
    accuracy at the stop against the run's last point. ``None`` when no run has a curve."""
    curves = {}
    for group in groups.values():
        for row in group["rows"]:
            for seed, curve in zip(row["seeds_done"], row.get("curves", ())):
                curves.setdefault((row["key"], seed), curve)
    if not curves:
        return None
    stops = [plateau_stop(curve) for curve in curves.values()]
    steps = sum(curve[-1]["step"] for curve in curves.values())
    losses = [stop["final"] - stop["fine"] for stop in stops]
    return {"patience": PLATEAU_PATIENCE, "gain": PLATEAU_GAIN, "runs": len(stops),
            "stopped_early": sum(stop["step"] < curve[-1]["step"] for stop, curve in zip(stops, curves.values())),
            "steps_saved": 1 - sum(stop["step"] for stop in stops) / steps,
            "mean_loss": statistics.fmean(losses), "worst_loss": max(losses)}


def _metrics(run: dict) -> dict[str, float]:
    metrics = {"fine": run["fine_accuracy"], "coarse": run["coarse_accuracy"], **run["per_question"]}
    if run.get("curve"):  # equal steps: validation fine accuracy at half the run's budget (held after a stop)
        metrics["fine_half_steps"] = at(run["curve"], "step", run.get("max_steps", run["curve"][-1]["step"]) / 2)
    return metrics


def summarise(runs: list[dict]) -> dict:
    """Mean and sample std over the seeds of one arm's runs, for every metric."""
    names = _metrics(runs[0]).keys()
    return {name: _stat([_metrics(run)[name] for run in runs]) for name in names}


def _stat(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def _arm_row(arm, runs: list[dict]) -> dict:
    """One arm of a group: its seeds done and, once it has runs, their summary and costs (and curves, where the
    time went, and the upgrade's first losses, when the runs have them)."""
    row = {"label": arm.label, "key": arm.key, "mode": arm.mode, "settings": dict(arm.settings),
           "seeds_done": [run["seed"] for run in runs], "summary": summarise(runs) if runs else None}
    if runs:
        row.update(
            llm_image_tokens=runs[0]["llm_image_tokens"],
            visual_tokens_seen=runs[0]["visual_tokens_seen"],
            train_seconds=statistics.fmean(run["train_seconds"] for run in runs),
            prefill_ms=statistics.fmean(run["prefill_ms"] for run in runs),
        )
        if all(run.get("curve") for run in runs):
            row["curves"] = [run["curve"] for run in runs]
        if all(run.get("phase_seconds") for run in runs):
            row["phase_seconds"] = {name: statistics.fmean(run["phase_seconds"][name] for run in runs)
                                    for name in runs[0]["phase_seconds"]}
        if all(run.get("upgrade") for run in runs):
            row["upgrade"] = {name: statistics.fmean(run["upgrade"][name] for run in runs)
                              for name in ("steps_before", "loss_before_switch", "loss_after_switch")}
            row["upgrade"]["first_losses"] = [statistics.fmean(losses) for losses in
                                              zip(*(run["upgrade"]["first_losses"] for run in runs))]
    return row


def equal_time(rows: list[dict]) -> float | None:
    """Equal training time: the time the cheapest arm (by the mean over its seeds) needed for its whole budget,
    on the learning curves' clock (training only, evaluations left out). Each arm's ``fine_equal_time`` is its
    validation fine accuracy at that time, per seed (an arm at that time is part-way through its budget, unless
    it is the cheapest). ``None`` when not every arm with runs has curves."""
    timed = [row for row in rows if row["summary"] is not None]
    if not timed or not all("curves" in row for row in timed):
        return None
    budget = min(statistics.fmean(curve[-1]["train_seconds_so_far"] for curve in row["curves"]) for row in timed)
    for row in timed:
        row["fine_equal_time"] = _stat([at(curve, "train_seconds_so_far", budget) for curve in row["curves"]])
    return budget


def collect(done: dict[tuple[str, int], dict], groups: list[str], seeds: tuple[int, ...], recipe: Recipe) -> dict:
    """The results of ``groups`` on the recipe's task from the runs ``done`` (by (run key, seed)): each arm's row,
    the compute spent, whether every arm has every seed, and the claims."""
    results = {"recipe": asdict(recipe), "seeds": list(seeds), "groups": {}}
    for group in groups:
        title, arms = GROUPS[group].title, GROUPS[group].arms
        keys = [run_key(recipe.task, arm) for arm in arms]
        rows = [_arm_row(arm, [done[key, seed] for seed in seeds if (key, seed) in done])
                for arm, key in zip(arms, keys)]
        results["groups"][group] = {"title": title, "rows": rows}
        budget = equal_time(rows)
        if budget is not None:
            results["groups"][group]["equal_time_seconds"] = budget
    used = {(run_key(recipe.task, arm), seed) for arm in arms_of(groups).values() for seed in seeds} & done.keys()
    results["compute_seconds"] = round(sum(done[key]["total_seconds"] for key in used), 1)
    results["wall_seconds"] = wall_seconds([done[key] for key in used])
    results["time_split"] = time_split([done[key] for key in used])
    results["complete"] = len(used) == len(arms_of(groups)) * len(seeds)
    results["claims"] = claims(results["groups"])
    if recipe.stop_on_plateau:  # the runs stopped themselves: what they saved, not a replay
        results["stopped"] = stopped_on_plateau([done[key] for key in used])
    else:
        results["plateau"] = plateau_replay(results["groups"])
    return results


def stopped_on_plateau(runs: list[dict]) -> dict | None:
    """Runs that stopped on a plateau (``Recipe.stop_on_plateau``): how many stopped before their budget, at
    which share of it (mean, least), and the share of all their budgets' steps left undone. None without runs."""
    if not runs:
        return None
    shares = [run["steps"] / run["max_steps"] for run in runs]
    return {"patience": PLATEAU_PATIENCE, "gain": PLATEAU_GAIN, "runs": len(runs),
            "stopped_early": sum(run["steps"] < run["max_steps"] for run in runs),
            "mean_share": statistics.fmean(shares), "least_share": min(shares),
            "steps_saved": 1 - sum(run["steps"] for run in runs) / sum(run["max_steps"] for run in runs)}


def wall_seconds(runs: list[dict]) -> float | None:
    """The wall time the ``runs`` took together: how long at least one of them was going (the union of their
    ``started_at`` .. ``finished_at`` spans), so runs side by side count once and the pauses of a lab resumed
    later count not at all; None when a run has no times (runs from before they were recorded)."""
    if not runs or any("started_at" not in run for run in runs):
        return None
    total, reached = 0.0, float("-inf")
    for start, end in sorted((run["started_at"], run["finished_at"]) for run in runs):
        total += max(0.0, end - max(start, reached))
        reached = max(reached, end)
    return round(total, 1)


def time_split(runs: list[dict]) -> dict | None:
    """Where the runs' time went, summed over the runs that timed their phases (``Recipe.time_phases``, one
    training each: not the upgraded arms): seconds per part of a run, in the order a run goes through them.
    Building the initial model (the task tokenizer, the weights; and the learning curve's untrained point) is
    the run's time outside training and evaluations; the training's set-up (data checks, compiling) and first
    step are ``until_first_step``; the timed steps are split by phase (``PhaseTimer``); the learning curve's
    later points are its own part; what remains of the training is the final save; then the test evaluation.
    None when no run timed its phases."""
    timed = [run for run in runs if run.get("phase_seconds") and "eval_seconds" in run and "upgrade" not in run]
    if not timed:
        return None
    parts = dict.fromkeys(("initial model", "set-up and first step", *(f"steps: {phase}" for phase in
                                                                      PhaseTimer.PHASES), "learning curve",
                           "final save", "test evaluation"), 0.0)
    for run in timed:
        phases, steps = run["phase_seconds"], run["phase_seconds"]["steps"]
        curve = run.get("curve_eval_seconds", 0.0)
        parts["initial model"] += run["total_seconds"] - run["train_seconds"] - run["eval_seconds"] - curve
        parts["set-up and first step"] += phases["until_first_step"]
        for phase in PhaseTimer.PHASES:
            parts[f"steps: {phase}"] += phases[phase] * steps
        parts["learning curve"] += curve
        parts["final save"] += run["train_seconds"] - phases["until_first_step"] - phases["step"] * steps
        parts["test evaluation"] += run["eval_seconds"]
    return {"runs": len(timed), "seconds": {part: round(seconds, 1) for part, seconds in parts.items()}}


def _row(groups: dict, group: str, key: str) -> dict | None:
    for row in groups.get(group, {}).get("rows", []):
        if row["key"] == key:
            return row
    return None


def _gap(a: dict, b: dict, metric: str) -> tuple[float, float]:
    """Mean difference a - b of a metric and the spread of that difference (std of the two means combined)."""
    sa, sb = a["summary"][metric], b["summary"][metric]
    return sa["mean"] - sb["mean"], (sa["std"] ** 2 + sb["std"] ** 2) ** 0.5


def claims(groups: dict) -> list[dict]:
    """The claims of ``CLAIMS`` whose group and arms have runs, checked on the measured means. The tolerance is
    the spread of the difference over the seeds, at least 2 points: 'above' needs a difference beyond it,
    'level' one within it, 'not above' one that does not pass it upwards. The verdict is 'yes', 'no', or, for
    an 'above' claim whose difference stays within the tolerance, 'not separated': the runs neither show nor
    refute it."""
    checks = []
    for claim in CLAIMS:
        row_a, row_b = _row(groups, claim.group, claim.a), _row(groups, claim.group, claim.b)
        if any(row is None or row["summary"] is None or claim.metric not in row["summary"] for row in (row_a, row_b)):
            continue
        gap, spread = _gap(row_a, row_b, claim.metric)
        tolerance = max(spread, 0.02)
        holds = {"above": gap > tolerance, "level": abs(gap) <= tolerance, "not_above": gap <= tolerance}[claim.expect]
        verdict = "yes" if holds else "not separated" if claim.expect == "above" and gap >= -tolerance else "no"
        checks.append({"claim": claim.text, "difference": gap, "spread": spread, "holds": bool(holds),
                       "verdict": verdict})
    return checks


def unseparated(rows: list[dict], questions: list[str] | None = None) -> list[tuple[str, float, float]]:
    """The questions (default: the default task's) on which a group's arms do not differ: every arm's mean
    within the spread of the seeds (at least 2 points) of every other's. ``(question, lowest mean, highest
    mean)`` for each; a question every arm answers at chance, or perfectly, cannot tell the arms apart."""
    rows = [row for row in rows if row["summary"] is not None]
    if len(rows) < 2:
        return []
    found = []
    for question in questions or get_task(DEFAULT_TASK).QUESTIONS:
        stats = [row["summary"][question] for row in rows if question in row["summary"]]
        means = [stat["mean"] for stat in stats]
        if len(stats) == len(rows) and max(means) - min(means) <= max(0.02, *(stat["std"] for stat in stats)):
            found.append((question, min(means), max(means)))
    return found
