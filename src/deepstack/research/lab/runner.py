"""Running the lab: every arm x seed once, in a process pool, each finished run appended to runs.jsonl at once
so that an interrupted lab resumes where it stopped."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from tqdm.auto import tqdm

from ..recipe import FULL, Recipe, in_processes, train_and_evaluate, worker_output
from ..tasks import DEFAULT_TASK, get_task
from .arms import GROUPS, Arm, arms_of
from .report import write_report
from .stats import collect, run_key
from .upgrade import upgrade_and_evaluate


def lab(out: str | Path = "runs/lab", groups: list[str] | None = None, seeds: tuple[int, ...] = (0, 1, 2),
        recipe: Recipe = FULL, report_dir: str | Path | None = None, command: str | None = None,
        workers: int = 1, train: bool = True) -> dict:
    """Train and evaluate every arm of ``groups`` for every seed on the recipe's task (skipping runs already in
    ``runs.jsonl``), then write the report (``train=False``: only the report, from the runs done so far). The data
    is made once (seed 0); the seeds vary the models' initialisation and data order. ``groups`` default to every
    group that suits the task (those made for it, and those made for any task)."""
    out = Path(out)
    groups = _checked(groups, recipe.task)
    data = data_folder(out, recipe.task)
    if train:
        _ensure_data(data, recipe)
    log = out / "runs.jsonl"
    done = _load_runs(log, recipe)
    arms = {run_key(recipe.task, arm): arm for arm in arms_of(groups).values()}
    # seed by seed, so that a lab cut short has every arm at the first seeds
    todo = [(key, arm, seed) for seed in seeds for key, arm in arms.items() if (key, seed) not in done] if train else []
    finished = sum((key, seed) in done for key in arms for seed in seeds)
    print(f"lab: {len(arms)} models x {len(seeds)} seeds; {finished} done, "
          + (f"{len(todo)} run(s) to do; {workers} at a time" if train else "reporting only"))
    jobs = [_job(key, arm, seed, data, out, recipe) for key, arm, seed in todo]
    command = command or "deepstack " + " ".join(sys.argv[1:])
    report_dir = Path(report_dir or out)
    for run in tqdm(_execute(jobs, workers), total=len(jobs), desc="lab runs", disable=not jobs):
        _append(log, run)
        done[run["key"], run["seed"]] = run
        tqdm.write(f"lab: {run['key']} seed {run['seed']}: fine {run['fine_accuracy']:.1%}, "
                   f"coarse {run['coarse_accuracy']:.1%} ({run['total_seconds']:.0f}s)")
        write_report(collect(done, groups, seeds, recipe), command, report_dir)  # a lab cut off keeps its report
    results = write_report(collect(done, groups, seeds, recipe), command, report_dir)
    print(f"lab: report in {report_dir / 'lab.md'}")
    return results


def _checked(groups: list[str] | None, task: str) -> list[str]:
    """The groups to run on ``task``: those asked, each checked, or every group that suits the task."""
    if groups is None:
        return [name for name, group in GROUPS.items() if group.task in (None, task)]
    unknown = [group for group in groups if group not in GROUPS]
    if unknown:
        raise ValueError(f"unknown lab group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    other = [f"{group} (task {GROUPS[group].task})" for group in groups if GROUPS[group].task not in (None, task)]
    if other:
        raise ValueError(f"lab group(s) {', '.join(other)} made for another task than {task}; the lab runs one task "
                         "at a time: run them with --task set to theirs, or leave them out")
    return groups


def task_of(groups: list[str] | None) -> str | None:
    """The one task that the ``groups`` name (groups made for any task name none), or None when they name none;
    groups naming different tasks are refused."""
    tasks = {GROUPS[group].task for group in groups or () if group in GROUPS} - {None}
    if len(tasks) > 1:
        raise ValueError(f"the lab groups {', '.join(groups)} are made for different tasks "
                         f"({', '.join(sorted(tasks))}); the lab runs one task at a time: run each task's groups "
                         "with its own command")
    return tasks.pop() if tasks else None


def _ensure_data(data: Path, recipe: Recipe) -> None:
    """The task's data of its current version and the recipe's sizes in ``data``, written if missing or other."""
    task = get_task(recipe.task)
    wanted = {"task": recipe.task, "version": task.TASK_VERSION, "sizes": recipe.sizes,
              "questions": list(recipe.questions)}
    if _dataset(data) != wanted:
        name = "fine-detail" if recipe.task == DEFAULT_TASK else recipe.task
        print(f"lab: writing the {name} data ({recipe.sizes}, {', '.join(recipe.questions)}) to {data}")
        task.make_data(data, seed=0, sizes=recipe.sizes, questions=recipe.questions)


def _dataset(data: Path) -> dict | None:
    """The task, version, sizes and questions of the dataset in ``data``, or None when there is none."""
    if not (data / "dataset.json").exists():
        return None
    written = json.loads((data / "dataset.json").read_text())
    task = written.get("task", DEFAULT_TASK)  # the fine-detail task's files do not name it
    return {"task": task, "version": written.get("version"), "sizes": written["sizes"],
            "questions": written.get("questions", list(get_task(task).QUESTIONS))}


def _job(key: str, arm: Arm, seed: int, data: Path, out: Path, recipe: Recipe) -> tuple:
    """The arguments of ``_run`` for one arm and seed: plain values, so that a worker process can take them."""
    return (key, arm, seed, str(data), str(model_folder(out, key, seed)), recipe)


def data_folder(out: Path, task: str) -> Path:
    """Where the lab in ``out`` keeps the data of ``task``."""
    return Path(out) / ("data" if task == DEFAULT_TASK else f"data-{task}")


def model_folder(out: Path, key: str, seed: int) -> Path:
    """Where the lab in ``out`` keeps the run of the model ``key`` (``run_key``) and ``seed``; the trained model is
    its ``trained`` folder."""
    return Path(out) / "models" / f"{key}-seed{seed}"


def _append(log: Path, run: dict) -> None:
    with log.open("a") as stream:
        stream.write(json.dumps(run) + "\n")


def _execute(jobs: list[tuple], workers: int):
    """Run the jobs here one after another, or ``workers`` at a time in processes that share the cores; yield
    each run as it finishes."""
    return in_processes(_run, jobs, workers)


def _run(key: str, arm: Arm, seed: int, data: str, folder: str, recipe: Recipe, threads: int | None = None) -> dict:
    """One lab run (in this process, or in a worker process with its share of the cores and its output in
    ``folder/run.log``). A run cut off half-way starts over. The record keeps the lab's recipe; the arm's own
    changes to it are in its key (and ``recipe_changes``)."""
    started = time.time()
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    own = replace(recipe, **dict(arm.recipe))
    with worker_output(folder, threads):
        if arm.upgrade_at is None:
            run = train_and_evaluate(arm.mode, Path(data), folder, seed, own, **dict(arm.settings))
        else:
            run = upgrade_and_evaluate(Path(data), folder, seed, own, arm.upgrade_at, arm.mode, **dict(arm.settings))
    run.pop("predictions")
    run.update(key=key, recipe=_as_json(recipe), task=recipe.task, task_version=get_task(recipe.task).TASK_VERSION,
               started_at=round(started, 1), finished_at=round(time.time(), 1))
    if arm.recipe:
        run["recipe_changes"] = dict(arm.recipe)
    return run


def _as_json(recipe: Recipe) -> dict:
    """The recipe as it reads back from runs.jsonl (tuples become lists), to compare runs by recipe."""
    return json.loads(json.dumps(asdict(recipe)))


def _load_runs(log: Path, recipe: Recipe) -> dict[tuple[str, int], dict]:
    """The runs of ``log`` by (key, seed), those of this recipe (task included; execution options such as
    ``compile`` aside, see ``Recipe.identity``) and task version only."""
    runs = {}
    # runs from before a recipe field existed ran with its default (the fine-detail task, its four questions)
    defaults = Recipe().identity()
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
            stored = Recipe.identity_of({**defaults, **run["recipe"]})
            if stored == recipe.identity() and run.get("task_version") == get_task(recipe.task).TASK_VERSION:
                runs[run["key"], run["seed"]] = run
    return runs
