"""Mean ± std over the seeds, and the paper's claims checked against them."""

from __future__ import annotations

import statistics
from dataclasses import asdict

from ..recipe import Recipe
from ..tasks.finedetail import QUESTIONS
from .arms import GROUPS, arms_of


def _metrics(run: dict) -> dict[str, float]:
    return {"fine": run["fine_accuracy"], "coarse": run["coarse_accuracy"], **run["per_question"]}


def summarise(runs: list[dict]) -> dict:
    """Mean and sample std over the seeds of one arm's runs, for every metric."""
    names = _metrics(runs[0]).keys()
    summary = {}
    for name in names:
        values = [_metrics(run)[name] for run in runs]
        summary[name] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
        }
    return summary


def _arm_row(arm, runs: list[dict]) -> dict:
    """One arm of a group: its seeds done and, once it has runs, their summary and costs."""
    row = {"label": arm.label, "key": arm.key, "mode": arm.mode, "settings": dict(arm.settings),
           "seeds_done": [run["seed"] for run in runs], "summary": summarise(runs) if runs else None}
    if runs:
        row.update(
            llm_image_tokens=runs[0]["llm_image_tokens"],
            visual_tokens_seen=runs[0]["visual_tokens_seen"],
            train_seconds=statistics.fmean(run["train_seconds"] for run in runs),
            prefill_ms=statistics.fmean(run["prefill_ms"] for run in runs),
        )
    return row


def collect(done: dict[tuple[str, int], dict], groups: list[str], seeds: tuple[int, ...], recipe: Recipe) -> dict:
    """The results of ``groups`` from the runs ``done`` (by (key, seed)): each arm's row, the compute spent,
    whether every arm has every seed, and the claims."""
    results = {"recipe": asdict(recipe), "seeds": list(seeds), "groups": {}}
    for group in groups:
        title, arms = GROUPS[group]
        rows = [_arm_row(arm, [done[arm.key, seed] for seed in seeds if (arm.key, seed) in done]) for arm in arms]
        results["groups"][group] = {"title": title, "rows": rows}
    used = {(key, seed) for key in arms_of(groups) for seed in seeds} & done.keys()
    results["compute_seconds"] = round(sum(done[key]["total_seconds"] for key in used), 1)
    results["complete"] = len(used) == len(arms_of(groups)) * len(seeds)
    results["claims"] = claims(results["groups"])
    return results


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
    """The paper's expected ordering, checked on the measured means. The tolerance is the spread of the
    difference over the seeds, at least 2 points: 'above' needs a difference beyond it, 'level' one within it,
    'not above' one that does not pass it upwards. The verdict is 'yes', 'no', or, for an 'above' claim whose
    difference stays within the tolerance, 'not separated': the runs neither show nor refute it."""
    checks = []

    def check(text: str, group: str, a: str, b: str, metric: str, expect: str):
        row_a, row_b = _row(groups, group, a), _row(groups, group, b)
        if row_a is None or row_b is None or row_a["summary"] is None or row_b["summary"] is None:
            return
        gap, spread = _gap(row_a, row_b, metric)
        tolerance = max(spread, 0.02)
        holds = {"above": gap > tolerance, "level": abs(gap) <= tolerance, "not_above": gap <= tolerance}[expect]
        verdict = "yes" if holds else "not separated" if expect == "above" and gap >= -tolerance else "no"
        checks.append({"claim": text, "difference": gap, "spread": spread, "holds": bool(holds), "verdict": verdict})

    check("llm well above none on fine questions", "table7", "llm", "none", "fine", "above")
    check("llm level with none on coarse questions", "table7", "llm", "none", "coarse", "level")
    check("llm close to global_hires_string on fine questions (at 1/5 of its context)", "table7", "llm",
          "global_hires_string", "fine", "level")
    check("dummy no better than none on fine questions", "table6", "dummy", "none", "fine", "not_above")
    check("llm above dummy on fine questions", "table6", "llm", "dummy", "fine", "above")
    for other in ("2d_grid", "1d_sequential"):
        check(f"2d_spatial above {other} on fine questions (Table 5: 2d_spatial best)", "table5", "llm",
              f"llm-stack_sampling={other}", "fine", "above")
    return checks


def unseparated(rows: list[dict]) -> list[tuple[str, float, float]]:
    """The questions on which a group's arms do not differ: every arm's mean within the spread of the seeds
    (at least 2 points) of every other's. ``(question, lowest mean, highest mean)`` for each; a question
    every arm answers at chance, or perfectly, cannot tell the arms apart."""
    rows = [row for row in rows if row["summary"] is not None]
    if len(rows) < 2:
        return []
    found = []
    for question in QUESTIONS:
        stats = [row["summary"][question] for row in rows if question in row["summary"]]
        means = [stat["mean"] for stat in stats]
        if len(stats) == len(rows) and max(means) - min(means) <= max(0.02, *(stat["std"] for stat in stats)):
            found.append((question, min(means), max(means)))
    return found
