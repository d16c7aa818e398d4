"""Running the lab: every arm x seed once, in a process pool, each finished run appended to runs.jsonl at once
so that an interrupted lab resumes where it stopped."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from ..recipe import FULL, Recipe, in_processes, train_and_evaluate, worker_output
from ..tasks.finedetail import QUESTIONS, TASK_VERSION, make_data
from .arms import GROUPS, Arm, arms_of
from .report import write_report
from .stats import collect


def lab(out: str | Path = "runs/lab", groups: list[str] | None = None, seeds: tuple[int, ...] = (0, 1, 2),
        recipe: Recipe = FULL, report_dir: str | Path | None = None, command: str | None = None,
        workers: int = 1, train: bool = True) -> dict:
    """Train and evaluate every arm of ``groups`` for every seed (skipping runs already in ``runs.jsonl``),
    then write the report (``train=False``: only the report, from the runs done so far). The data is made
    once (seed 0); the seeds vary the models' initialisation and data order."""
    out = Path(out)
    groups = _checked(groups or list(GROUPS))
    data = out / "data"
    if train:
        _ensure_data(data, recipe)
    log = out / "runs.jsonl"
    done = _load_runs(log, recipe)
    arms = arms_of(groups)
    # seed by seed, so that a lab cut short has every arm at the first seeds
    todo = [(arm, seed) for seed in seeds for arm in arms.values() if (arm.key, seed) not in done] if train else []
    print(f"lab: {len(arms)} models x {len(seeds)} seeds; {len(todo)} run(s) to do, "
          f"{len(arms) * len(seeds) - len(todo)} done; {workers} at a time")
    jobs = [_job(arm, seed, data, out, recipe) for arm, seed in todo]
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


def _checked(groups: list[str]) -> list[str]:
    unknown = [group for group in groups if group not in GROUPS]
    if unknown:
        raise ValueError(f"unknown lab group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    return groups


def _ensure_data(data: Path, recipe: Recipe) -> None:
    """The fine-detail data of this task version and the recipe's sizes in ``data``, written if missing or other."""
    if _dataset(data) != {"version": TASK_VERSION, "sizes": recipe.sizes, "questions": list(recipe.questions)}:
        print(f"lab: writing the fine-detail data ({recipe.sizes}, {', '.join(recipe.questions)}) to {data}")
        make_data(data, seed=0, sizes=recipe.sizes, questions=recipe.questions)


def _dataset(data: Path) -> dict | None:
    """The version, sizes and questions of the dataset in ``data``, or None when there is none."""
    if not (data / "dataset.json").exists():
        return None
    written = json.loads((data / "dataset.json").read_text())
    return {"version": written.get("version"), "sizes": written["sizes"],
            "questions": written.get("questions", list(QUESTIONS))}


def _job(arm: Arm, seed: int, data: Path, out: Path, recipe: Recipe) -> tuple:
    """The arguments of ``_run`` for one arm and seed: plain values, so that a worker process can take them."""
    return (arm.key, arm.mode, dict(arm.settings), seed, str(data), str(out / "models" / f"{arm.key}-seed{seed}"),
            recipe)


def _append(log: Path, run: dict) -> None:
    with log.open("a") as stream:
        stream.write(json.dumps(run) + "\n")


def _execute(jobs: list[tuple], workers: int):
    """Run the jobs here one after another, or ``workers`` at a time in processes that share the cores; yield
    each run as it finishes."""
    return in_processes(_run, jobs, workers)


def _run(key: str, mode: str, settings: dict, seed: int, data: str, folder: str, recipe: Recipe,
         threads: int | None = None) -> dict:
    """One lab run (in this process, or in a worker process with its share of the cores and its output in
    ``folder/run.log``). A run cut off half-way starts over."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    with worker_output(folder, threads):
        run = train_and_evaluate(mode, Path(data), folder, seed, recipe, **settings)
    run.pop("predictions")
    run.update(key=key, recipe=_as_json(recipe), task_version=TASK_VERSION)
    return run


def _as_json(recipe: Recipe) -> dict:
    """The recipe as it reads back from runs.jsonl (tuples become lists), to compare runs by recipe."""
    return json.loads(json.dumps(asdict(recipe)))


def _load_runs(log: Path, recipe: Recipe) -> dict[tuple[str, int], dict]:
    """The runs of ``log`` by (key, seed), those of this recipe and task version only."""
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
            stored = {"questions": list(QUESTIONS), **run["recipe"]}  # runs from before the field asked all four
            if stored == _as_json(recipe) and run.get("task_version") == TASK_VERSION:
                runs[run["key"], run["seed"]] = run
    return runs
