"""`deepstack lab`: the paper's ablations in miniature, on the fine-detail task.

Every arm is a model trained from scratch with the demo's recipe (same data, budget and tiny parts), for
several seeds; the report gives mean ± std over the seeds and checks the paper's claims against them:

- ``table7``: how the hi-res tokens reach the LLM (none, dim_concat, hires_string, global_hires_string, llm, vit);
- ``table6``: dummy stacks (the global tokens stacked) vs real hi-res stacks;
- ``table5``: the Sampling2D layouts (2d_spatial, 2d_grid, 1d_sequential);
- ``fig3a`` / ``fig3b`` / ``fig3c``: start layer, interval and number of stacked layers.

Arms that are the same model (``llm`` with default settings appears in most groups) are trained once. Each
finished run is appended to ``runs.jsonl`` at once, so an interrupted lab continues where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..model.configuration import DeepStackConfig
from .recipe import FULL, Recipe, train_and_evaluate
from .tasks.finedetail import ANSWERS, QUESTIONS, TASK_VERSION, make_data


@dataclass(frozen=True)
class Arm:
    label: str
    mode: str
    settings: tuple = ()  # (key, value) pairs of DeepStackConfig settings

    @property
    def key(self) -> str:
        """The model's identity: arms with the same mode and settings share their runs."""
        settings = dict(self.settings)
        changed = sorted(key for key in settings if settings[key] != getattr(DeepStackConfig, key))
        return self.mode + "".join(f"-{key}={settings[key]}" for key in changed)


def _arm(label: str, mode: str = "llm", **settings) -> Arm:
    return Arm(label, mode, tuple(sorted(settings.items())))


GROUPS: dict[str, tuple[str, list[Arm]]] = {
    "table7": (
        "Table 7 analogue: how the hi-res tokens reach the LLM",
        [_arm("none", "none"), _arm("dim_concat", "dim_concat"), _arm("hires_string", "hires_string"),
         _arm("global_hires_string", "global_hires_string"), _arm("llm (DeepStack-L)"), _arm("vit (DeepStack-V)", "vit")],
    ),
    "table6": ("Table 6 analogue: dummy stacks (the global tokens) vs hi-res stacks",
               [_arm("none", "none"), _arm("dummy", "dummy"), _arm("llm")]),
    "table5": (
        "Table 5 analogue: Sampling2D layout of the stacks",
        [_arm(name, stack_sampling=name) for name in ("2d_spatial", "2d_grid", "1d_sequential")],
    ),
    "fig3a": ("Fig. 3a analogue: first layer that receives a stack (8-layer LLM)",
              [_arm(f"start {layer}", stack_start_layer=layer) for layer in (0, 1, 2, 4)]),
    "fig3b": ("Fig. 3b analogue: interval between stacked layers",
              [_arm(f"interval {interval}", stack_interval=interval) for interval in (1, 2)]),
    "fig3c": ("Fig. 3c analogue: number of stacked layers (stacks injected)",
              [_arm(f"{count} layer(s)", num_stack_layers=count) for count in (1, 2, 3)] + [_arm("4 layers (all)")]),
}


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


def lab(out: str | Path = "runs/lab", groups: list[str] | None = None, seeds: tuple[int, ...] = (0, 1, 2),
        recipe: Recipe = FULL, report_dir: str | Path | None = None, command: str | None = None,
        workers: int = 1, train: bool = True) -> dict:
    """Train and evaluate every arm of ``groups`` for every seed (skipping runs already in ``runs.jsonl``),
    then write the report (``train=False``: only the report, from the runs done so far). The data is made
    once (seed 0); the seeds vary the models' initialisation and data order."""
    out = Path(out)
    groups = groups or list(GROUPS)
    unknown = [group for group in groups if group not in GROUPS]
    if unknown:
        raise ValueError(f"unknown lab group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    data = out / "data"
    if train and _dataset(data) != {"version": TASK_VERSION, "sizes": recipe.sizes}:
        print(f"lab: writing the fine-detail data ({recipe.sizes}) to {data}")
        make_data(data, seed=0, sizes=recipe.sizes)
    log = out / "runs.jsonl"
    done = _load_runs(log, recipe)
    arms = {arm.key: arm for group in groups for arm in GROUPS[group][1]}
    # seed by seed, so that a lab cut short has every arm at the first seeds
    todo = [(arm, seed) for seed in seeds for arm in arms.values() if (arm.key, seed) not in done] if train else []
    print(f"lab: {len(arms)} models x {len(seeds)} seeds; {len(todo)} run(s) to do, "
          f"{len(arms) * len(seeds) - len(todo)} done; {workers} at a time")
    jobs = [(arm.key, arm.mode, dict(arm.settings), seed, str(data), str(out / "models" / f"{arm.key}-seed{seed}"),
             recipe) for arm, seed in todo]
    command = command or "deepstack " + " ".join(sys.argv[1:])
    report_dir = Path(report_dir or out)
    for run in tqdm(_execute(jobs, workers), total=len(jobs), desc="lab runs", disable=not jobs):
        with log.open("a") as stream:
            stream.write(json.dumps(run) + "\n")
        done[run["key"], run["seed"]] = run
        tqdm.write(f"lab: {run['key']} seed {run['seed']}: fine {run['fine_accuracy']:.1%}, "
                   f"coarse {run['coarse_accuracy']:.1%} ({run['total_seconds']:.0f}s)")
        _write_report(collect(done, groups, seeds, recipe), command, report_dir)  # a lab cut off keeps its report
    results = _write_report(collect(done, groups, seeds, recipe), command, report_dir)
    print(f"lab: report in {report_dir / 'lab.md'}")
    return results


def _write_report(results: dict, command: str, report_dir: Path) -> dict:
    results["command"] = command
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "lab.json").write_text(json.dumps(results, indent=2))
    (report_dir / "lab.md").write_text(report(results))
    plot(results, report_dir / "lab.png")
    return results


def _execute(jobs: list[tuple], workers: int):
    """Run the jobs here one after another, or ``workers`` at a time in processes that share the cores; yield
    each run as it finishes."""
    if workers <= 1:
        for job in jobs:
            yield _run(*job)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run, *job, threads=threads) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def _run(key: str, mode: str, settings: dict, seed: int, data: str, folder: str, recipe: Recipe,
         threads: int | None = None) -> dict:
    """One lab run (in this process, or in a worker process with its share of the cores and its output in
    ``folder/run.log``). A run cut off half-way starts over."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    if threads is None:
        run = train_and_evaluate(mode, Path(data), folder, seed, recipe, **settings)
    else:
        import torch

        torch.set_num_threads(threads)
        folder.mkdir(parents=True)
        with open(folder / "run.log", "w") as stream, contextlib.redirect_stdout(stream), \
                contextlib.redirect_stderr(stream):
            run = train_and_evaluate(mode, Path(data), folder, seed, recipe, **settings)
    run.pop("predictions")
    run.update(key=key, recipe=_as_json(recipe), task_version=TASK_VERSION)
    return run


def _as_json(recipe: Recipe) -> dict:
    """The recipe as it reads back from runs.jsonl (tuples become lists), to compare runs by recipe."""
    return json.loads(json.dumps(asdict(recipe)))


def _dataset(data: Path) -> dict | None:
    """The version and sizes of the dataset in ``data``, or None when there is none."""
    if not (data / "dataset.json").exists():
        return None
    written = json.loads((data / "dataset.json").read_text())
    return {"version": written.get("version"), "sizes": written["sizes"]}


def _load_runs(log: Path, recipe: Recipe) -> dict[tuple[str, int], dict]:
    runs = {}
    if log.exists():
        for number, line in enumerate(log.read_text().splitlines(), 1):
            try:
                run = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{log}, line {number}: not a JSON run record ({error.msg}), perhaps a lab cut off while writing "
                    "it; delete that line (that run trains again) and rerun, the other runs are kept"
                ) from None
            # runs of another recipe or another version of the task do not count
            if run["recipe"] == _as_json(recipe) and run.get("task_version") == TASK_VERSION:
                runs[run["key"], run["seed"]] = run
    return runs


def collect(done: dict[tuple[str, int], dict], groups: list[str], seeds: tuple[int, ...], recipe: Recipe) -> dict:
    results = {"recipe": asdict(recipe), "seeds": list(seeds), "groups": {}}
    for group in groups:
        title, arms = GROUPS[group]
        rows = []
        for arm in arms:
            runs = [done[arm.key, seed] for seed in seeds if (arm.key, seed) in done]
            row = {"label": arm.label, "key": arm.key, "mode": arm.mode, "settings": dict(arm.settings),
                   "seeds_done": [run["seed"] for run in runs], "summary": summarise(runs) if runs else None}
            if runs:
                row.update(
                    llm_image_tokens=runs[0]["llm_image_tokens"],
                    visual_tokens_seen=runs[0]["visual_tokens_seen"],
                    train_seconds=statistics.fmean(run["train_seconds"] for run in runs),
                    prefill_ms=statistics.fmean(run["prefill_ms"] for run in runs),
                )
            rows.append(row)
        results["groups"][group] = {"title": title, "rows": rows}
    used = {(arm.key, seed) for group in groups for arm in GROUPS[group][1] for seed in seeds} & done.keys()
    results["compute_seconds"] = round(sum(done[key]["total_seconds"] for key in used), 1)
    results["complete"] = len(used) == len({arm.key for g in groups for arm in GROUPS[g][1]}) * len(seeds)
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


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.1%} ± {stat['std']:.1%}"


def report(results: dict) -> str:
    recipe = results["recipe"]
    lines = [
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
        "## The paper's claims, checked",
        "",
        "| claim | difference (mean) | spread of the difference | holds |",
        "|---|---|---|---|",
    ]
    for claim in results["claims"]:
        lines.append(f"| {claim['claim']} | {claim['difference']:+.1%} | {claim['spread']:.1%} | "
                     f"{'NO' if claim['verdict'] == 'no' else claim['verdict']} |")
    if any(claim["verdict"] == "not separated" for claim in results["claims"]):
        lines += ["", "*not separated*: the difference stays within the spread (at least 2 points), so these runs "
                  "neither show the claim nor refute it; the tables below name the questions that cannot tell the "
                  "arms apart."]
    questions = list(QUESTIONS)
    for group in results["groups"].values():
        lines += ["", f"## {group['title']}", "",
                  "| arm | LLM context | visual tokens seen | fine | coarse | " + " | ".join(questions) + " | train s |",
                  "|---|---|---|---|---|" + "---|" * len(questions) + "---|"]
        for row in group["rows"]:
            summary = row["summary"]
            label = row["label"]
            if len(row["seeds_done"]) != len(results["seeds"]):
                label += f" (seeds {', '.join(map(str, row['seeds_done'])) or 'none yet'})"
            if summary is None:
                lines.append(f"| {label} |" + " |" * (len(questions) + 5))
                continue
            lines.append(
                f"| {label} | {row['llm_image_tokens']} | {row['visual_tokens_seen']} | {_cell(summary['fine'])} | "
                f"{_cell(summary['coarse'])} | " + " | ".join(_cell(summary[q]) for q in questions if q in summary)
                + f" | {row['train_seconds']:.0f} |"
            )
        flat = unseparated(group["rows"])
        if flat:
            lines += ["", "Questions on which these arms do not differ (means within the seeds' spread, at least 2 "
                      "points): " + "; ".join(f"{question} {low:.1%} to {high:.1%} (chance {1 / len(ANSWERS[question]):.0%})"
                                              for question, low, high in flat) + "."]
    lines += ["", "![lab](lab.png)", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(results["groups"].values())
    columns = min(3, len(groups))
    rows = (len(groups) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), dpi=100, squeeze=False)
    for axis, group in zip(axes.flat, groups):
        group = {**group, "rows": [row for row in group["rows"] if row["summary"] is not None]}
        labels = [row["label"] for row in group["rows"]]
        for offset, (metric, colour) in enumerate((("fine", "tab:blue"), ("coarse", "tab:orange"))):
            xs = [index + (offset - 0.5) * 0.38 for index in range(len(labels))]
            means = [row["summary"][metric]["mean"] for row in group["rows"]]
            stds = [row["summary"][metric]["std"] for row in group["rows"]]
            axis.bar(xs, means, 0.38, yerr=stds, capsize=3, color=colour, alpha=0.8, label=metric)
            for x, row in zip(xs, group["rows"]):
                values = row["summary"][metric]["values"]
                axis.scatter([x] * len(values), values, s=8, color="black", zorder=3)
        axis.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=7)
        axis.set_ylim(0, 1.05)
        axis.set_title(group["title"], fontsize=8)
        axis.set_ylabel("test accuracy")
    axes.flat[0].legend(fontsize=7)
    for axis in list(axes.flat)[len(groups):]:
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
