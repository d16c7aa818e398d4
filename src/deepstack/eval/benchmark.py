"""Benchmark runs: a model's greedy answers to one benchmark of ``loaders.TASKS``, scored by that benchmark's metric
(the paper's Tables 1 and 2 report these), with the report written next to the answers.

A run's folder holds

- ``predictions.jsonl``: one line per question, ``{"question_id", "prediction", "answers", "score",
  "category"}``, appended and flushed answer by answer, so a run that is killed keeps what it answered and
  ``resume=True`` continues it (a run of several processes writes a part file per process and gathers them
  here, in question order, when all are done: ``parallel``);
- ``results.json``: the task, metric, model, data, counts, the records the loader skipped, the overall score
  (the mean of the per-question scores), per-category scores where the benchmark has categories (ChartQA's
  splits, POPE's splits, multiple-choice and LLaVA categories, InfoVQA's question types), the task's further
  scores under ``other_scores`` (MultiDocVQA's accuracy) and, for POPE, all of ``metrics.pope_scores``;
- ``results.md``: the same as a Markdown table, scores in percent.

``score_predictions`` makes the same report from predictions made by any system, and ``compare`` puts several
models' reports on one task side by side.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..infer.offline import answer_stream
from ..model.modeling import DeepStackForConditionalGeneration
from ..model.processing import DeepStackProcessor, load_image
from ..model.video_file import load_video
from ..utils.plots import saved_figure
from ..utils.tables import markdown_table
from .loaders import SCORES, TASKS, Item, Loaded, score
from .metrics import pope_scores
from .parallel import gather, part_path, parts, processes, shard

PREDICTIONS, RESULTS, REPORT, CHART = "predictions.jsonl", "results.json", "results.md", "results.png"
SHOWN = 10  # ids and problems named in a message or a report; the rest are counted
POPE_COLUMNS = {"accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "F1",
                "yes_ratio": "yes ratio"}


def load_task(
    task: str,
    data: str | Path,
    limit: int | None = None,
    image_folder: str | Path | None = None,
    verify_images: bool = True,
    *,
    echo: bool = True,
) -> Loaded:
    """The task's items, read by its loader; prints (with ``echo``) how many were read and which records were
    skipped, and why (``Loaded.summary``). An unknown task or a missing annotation file is a ``ValueError`` that
    says what the task expects."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if not Path(data).exists():
        raise ValueError(f"{data}: no such file or folder; {task} reads {TASKS[task].path}")
    try:
        loaded = TASKS[task].load(data, image_folder, verify_images=verify_images, limit=limit)
    except FileNotFoundError as error:
        raise ValueError(f"{error}; {task} reads {TASKS[task].path}") from None
    if echo:
        print(f"{task} ({data}): {loaded.summary(SHOWN)}")
    return loaded


# --- Running a model ----------------------------------------------------------------------------------------


def run_benchmark(
    model: DeepStackForConditionalGeneration,
    processor: DeepStackProcessor,
    task: str,
    data: str | Path,
    out: str | Path,
    limit: int | None = None,
    batch_size: int = 16,
    resume: bool = False,
    max_new_tokens: int = 32,
    *,
    image_folder: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Answer every question of ``task`` (the first ``limit``) greedily, ``batch_size`` at a time, saving each
    answer to ``out/predictions.jsonl`` as it is made; then score them all and write ``results.json`` and
    ``results.md`` (see the module's docstring). Returns the results.

    Up to ``batch_size`` questions are decoded together, a finished answer's row taken by the next question
    (continuous batching, ``infer.offline``); an answer does not depend on the others decoded with it.
    ``max_new_tokens`` bounds an answer; a short-answer prompt usually stops well before 32 tokens at the
    end-of-sequence token. With ``resume`` the questions already in ``predictions.jsonl`` are skipped (a line
    cut short by a kill is dropped, with a note); without it an existing ``predictions.jsonl`` is refused.

    Launched as several processes (``accelerate launch``, ``torchrun``, ``deepstack eval --processes N``), each
    answers its shard of the questions with its copy of the model and the first gathers the answers and scores
    them once (``parallel``); every process returns the results.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}; it must be at least 1")
    out, state = Path(out), processes()
    path, main = out / PREDICTIONS, state.is_main_process
    loaded = load_task(task, data, limit, image_folder, echo=main)
    order = {item.question_id: index for index, item in enumerate(loaded.items)}
    done = _resume_point(path, resume, order, state)
    todo = [item for item in loaded.items if item.question_id not in done]
    if done and main:
        print(f"resuming: {len(loaded.items) - len(todo)} of {len(loaded.items)} questions already answered in "
              f"{path}")
    model.eval()
    mine = shard(todo, state.process_index, state.num_processes)
    target = path if state.num_processes == 1 else part_path(path, state.process_index)
    _answer_into(model, processor, mine, target, batch_size, max_new_tokens, desc=task, progress=progress and main)
    state.wait_for_everyone()
    if main:
        gather(path, order, _question_id)
        predictions = read_predictions(path)
        asked = {item.question_id for item in loaded.items}
        others = [question_id for question_id in predictions if question_id not in asked]
        if others:  # e.g. resumed with a smaller limit than the run that wrote them
            print(f"note: {len(others)} prediction(s) in {path} are for questions outside this run "
                  f"({_listed(others)}); they are not scored")
        results = {"task": task, "metric": TASKS[task].metric, "model": _model_path(model), "data": str(data),
                   "limit": limit, "max_new_tokens": max_new_tokens, **_results(task, loaded, predictions)}
        write_report(results, out)
    state.wait_for_everyone()
    return results if main else json.loads((out / RESULTS).read_text(encoding="utf-8"))


def _resume_point(path: Path, resume: bool, order: dict[str, int], state) -> dict[str, str]:
    """The predictions already made for this run's folder (``_previous_predictions``), with the part files a
    killed run of several processes left gathered into ``path`` first; every process checks, the first one
    repairs and gathers, the others wait for it and read."""
    earlier = parts(path) + ([path] if path.is_file() and path.read_text(encoding="utf-8").strip() else [])
    if earlier and not resume:  # refused by every process, before any waits for the others
        raise ValueError(f"{path.parent} already holds predictions from an earlier run "
                         f"({', '.join(file.name for file in earlier)}); pass --resume (resume=True) to continue that "
                         "run, or choose another --out")
    if state.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        _previous_predictions(path, resume)
        gather(path, order, _question_id)
    state.wait_for_everyone()
    return read_predictions(path) if path.is_file() else {}


def _model_path(model: DeepStackForConditionalGeneration) -> str | None:
    """Where the model was loaded from (``from_pretrained`` records it); None for a model built in memory."""
    return str(getattr(model, "name_or_path", "") or "") or None


def _answer_into(
    model: DeepStackForConditionalGeneration,
    processor: DeepStackProcessor,
    items: Sequence[Item],
    path: Path,
    batch_size: int,
    max_new_tokens: int,
    desc: str,
    progress: bool,
) -> None:
    """Greedy answers to ``items``, up to ``batch_size`` decoded together with continuous batching
    (``infer.offline``), appended to ``path`` one line each in the items' order and flushed as each is written,
    so a kill loses only answers not yet written."""

    def questions():
        for item in items:  # a video is shown as one image, its frame mosaic (docs/video.md)
            yield [load_video(image) if item.video else load_image(image) for image in item.images], item.prompt

    with path.open("a", encoding="utf-8") as file, tqdm(
        total=len(items), desc=desc, unit="item", disable=not progress, dynamic_ncols=True
    ) as bar:
        for item, text in zip(items, answer_stream(model, processor, questions(), batch_size, max_new_tokens)):
            file.write(json.dumps(prediction_record(item, text)) + "\n")
            file.flush()
            bar.update()


def prediction_record(item: Item, prediction: str) -> dict:
    """One line of ``predictions.jsonl``."""
    return {"question_id": item.question_id, "prediction": prediction, "answers": list(item.answers),
            "score": score(prediction, item), "category": item.category}


# --- Reading predictions ------------------------------------------------------------------------------------


def _parse_line(path: Path, number: int, line: str) -> tuple[str, str]:
    """``(question_id, prediction)`` from one JSON line, or a ``ValueError`` naming the file and line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}, column {error.colno})") from None
    if not isinstance(record, dict) or "question_id" not in record or "prediction" not in record:
        raise ValueError(f"{path}, line {number}: each line must be a JSON object with 'question_id' and 'prediction'")
    prediction = record["prediction"]
    if isinstance(prediction, bool) or not isinstance(prediction, (str, int, float)):
        raise ValueError(f"{path}, line {number}: 'prediction' is {prediction!r}; it must be the answer's text")
    return str(record["question_id"]), str(prediction)


def _question_id(path: Path, number: int, line: str) -> str:
    return _parse_line(path, number, line)[0]


def read_predictions(path: str | Path) -> dict[str, str]:
    """question id -> prediction from a JSON lines file of ``{"question_id", "prediction", ...}`` (other fields
    are ignored; ids are compared as strings). A bad line or a repeated id is a ``ValueError`` naming them."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such predictions file")
    text = path.read_text(encoding="utf-8")
    pairs = [_parse_line(path, number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    repeated = [question_id for question_id, count in Counter(q for q, _ in pairs).items() if count > 1]
    if repeated:
        raise ValueError(f"{path}: {len(repeated)} question id(s) have more than one prediction "
                         f"({_listed(repeated)}); keep one line per question")
    return dict(pairs)


def _previous_predictions(path: Path, resume: bool) -> dict[str, str]:
    """The predictions an earlier, maybe killed, run left in ``path``: refused without ``resume``; with it, a
    last line cut short by the kill is dropped (and the file rewritten without it) with a note."""
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        return {}
    if not resume:
        raise ValueError(f"{path} already holds predictions from an earlier run; pass --resume (resume=True) to "
                         "continue that run, or choose another --out")
    text = path.read_text(encoding="utf-8")
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    last_number, last = lines[-1]
    try:
        _parse_line(path, last_number, last)
        cut_short = False
    except ValueError:
        cut_short = True
        print(f"note: {path}, line {last_number} was cut short when the run stopped; dropped, its question is "
              "asked again")
    if cut_short or not text.endswith("\n"):  # rewritten whole, so the next append starts on a line of its own
        kept = lines[:-1] if cut_short else lines
        partial = path.with_name(path.name + ".partial")
        partial.write_text("".join(line + "\n" for _, line in kept), encoding="utf-8")
        os.replace(partial, path)
    return read_predictions(path)


# --- Scoring ------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _results(task: str, loaded: Loaded, predictions: dict[str, str]) -> dict:
    """Counts, skipped records and scores of ``loaded``'s items given their predictions (every item has one)."""
    items = loaded.items
    scores = [score(predictions[item.question_id], item) for item in items]
    results = {
        "count": len(items),
        "skipped": loaded.skipped,
        "problems": [str(problem) for problem in loaded.problems[:SHOWN]],
        "score": _mean(scores),
    }
    if TASKS[task].also:
        results["other_scores"] = {name: _mean([SCORES[name](predictions[item.question_id], item) for item in items])
                                   for name in TASKS[task].also}
    groups = [((item.category,) if item.category is not None else ()) + item.groups for item in items]
    categories = list(dict.fromkeys(group for item_groups in groups for group in item_groups))
    if categories:
        results["categories"] = {
            category: {"score": _mean(in_category), "count": len(in_category)}
            for category in categories
            for in_category in [[s for s, item_groups in zip(scores, groups) if category in item_groups]]
        }
    if TASKS[task].metric == "pope":
        groups = {"all": items} | {category: [item for item in items if item.category == category]
                                    for category in categories}
        results["pope"] = {
            group: pope_scores([predictions[item.question_id] for item in members],
                               [item.answers[0] for item in members])
            for group, members in groups.items()
        }
    return results


def check_ids(path: Path, task: str, loaded: Loaded, predictions: dict[str, str]) -> None:
    """Every question of ``loaded`` predicted, and nothing else; otherwise a ``ValueError`` listing the first
    ids of each kind and how many there are."""
    expected = {item.question_id for item in loaded.items}
    missing = [item.question_id for item in loaded.items if item.question_id not in predictions]
    unknown = [question_id for question_id in predictions if question_id not in expected]
    wrong = []
    if missing:
        wrong.append(f"{len(missing)} question(s) of {task} have no prediction: {_listed(missing)}")
    if unknown:
        wrong.append(f"{len(unknown)} prediction(s) name question ids that {task} does not have (or whose records "
                     f"the loader skipped, listed above): {_listed(unknown)}")
    if wrong:
        raise ValueError(f"{path}: " + "; ".join(wrong) + "; predict exactly the benchmark's questions (with the "
                         "same limit)")


def score_predictions(
    task: str,
    data: str | Path,
    predictions_file: str | Path,
    out: str | Path,
    limit: int | None = None,
    *,
    image_folder: str | Path | None = None,
    verify_images: bool = True,
) -> dict:
    """Score predictions made by any system, without a model: ``predictions_file`` is JSON lines with
    ``question_id`` and ``prediction`` (our ``predictions.jsonl`` is one), one line per question of ``task``
    (its first ``limit``). Writes ``results.json`` and ``results.md`` to ``out`` as ``run_benchmark`` does and
    returns the results. Ids missing from the file, or not in the benchmark, are a ``ValueError`` naming them.

    The images must be there, as for a run, since the loader skips records whose image is missing (with
    ``verify_images=False`` it only checks that each file exists, which is faster)."""
    loaded = load_task(task, data, limit, image_folder, verify_images)
    predictions = read_predictions(predictions_file)
    check_ids(Path(predictions_file), task, loaded, predictions)
    results = {"task": task, "metric": TASKS[task].metric, "model": None, "predictions": str(predictions_file),
               "data": str(data), "limit": limit, **_results(task, loaded, predictions)}
    Path(out).mkdir(parents=True, exist_ok=True)
    write_report(results, Path(out))
    return results


# --- Reports ------------------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _listed(ids: Sequence[str], shown: int = SHOWN) -> str:
    """``'a', 'b', 'c'`` or ``'a', 'b', ... and 8 more``."""
    text = ", ".join(repr(question_id) for question_id in ids[:shown])
    return text + (f", ... and {len(ids) - shown} more" if len(ids) > shown else "")


def _groups(results: dict) -> list[tuple[str, int, float | None]]:
    """``(group, count, score)``: ``"all"`` first, then each category."""
    rows = [("all", results["count"], results["score"])]
    rows += [(name, group["count"], group["score"]) for name, group in results.get("categories", {}).items()]
    return rows


def markdown_report(results: dict) -> str:
    """``results.md``: what was evaluated, then one row per group (all, then each category); for POPE its five
    scores per split."""
    source = results.get("model") or results.get("predictions") or "a model built in memory"
    also = "".join(f"; {name} {_percent(value)}" for name, value in results.get("other_scores", {}).items())
    lines = [f"# {results['task']}: {source}", "",
             f"{results['count']} questions from {results['data']}, {results['skipped']} records skipped; "
             f"metric {results['metric']}{also}, scores in %.", ""]
    if "pope" in results:
        header = ["split", "questions", *POPE_COLUMNS.values(), "neither yes nor no"]
        rows = [[group, scores["count"], *(_percent(scores[key]) for key in POPE_COLUMNS), scores["other"]]
                for group, scores in results["pope"].items()]
    else:
        header = ["group", "questions", "score"]
        rows = [[group, count, _percent(value)] for group, count, value in _groups(results)]
    lines.append(markdown_table(header, rows))
    if results["problems"]:
        lines += ["", f"Skipped records ({results['skipped']}; the first {len(results['problems'])}):", ""]
        lines += [f"- {problem}" for problem in results["problems"]]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: Path) -> None:
    """``results.json`` and ``results.md`` in ``out``."""
    (out / RESULTS).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / REPORT).write_text(markdown_report(results), encoding="utf-8")


def _labels(folders: Sequence[Path]) -> list[str]:
    """Each run's folder name, or its whole path where two names are the same."""
    names = [folder.name for folder in folders]
    return names if len(set(names)) == len(names) else [str(folder) for folder in folders]


def compare(results_dirs: Iterable[str | Path], out: str | Path) -> dict:
    """Several runs on the same task side by side: ``out/results.md`` (a row per group, a column per run, scores
    in %; POPE adds a row of F1 per split) and ``out/results.png`` (grouped bars). Each run is named by its
    folder. Returns ``{"task", "metric", "runs": {name: {group: score}}}``."""
    folders, out = [Path(folder) for folder in results_dirs], Path(out)
    missing = [str(folder) for folder in folders if not (folder / RESULTS).is_file()]
    if missing:
        raise ValueError(f"no {RESULTS} in {', '.join(missing)}; run the benchmark there first")
    if out.resolve() in {folder.resolve() for folder in folders}:
        raise ValueError(f"{out} is one of the runs compared; its {REPORT} would be overwritten, choose another out")
    runs = [json.loads((folder / RESULTS).read_text(encoding="utf-8")) for folder in folders]
    tasks = {run["task"] for run in runs}
    if len(tasks) != 1:
        raise ValueError(f"the runs are on different tasks ({', '.join(sorted(tasks))}); compare runs of one task")
    names, task, metric = _labels(folders), runs[0]["task"], runs[0]["metric"]
    table = {name: {group: value for group, _, value in _groups(run)} for name, run in zip(names, runs)}
    if metric == "pope":
        for name, run in zip(names, runs):
            table[name] |= {f"F1 {group}": scores["f1"] for group, scores in run["pope"].items()}
    groups = list(dict.fromkeys(group for scores in table.values() for group in scores))
    rows = [[group, *(_percent(table[name].get(group)) for name in names)] for group in groups]
    rows.append(["questions", *(run["count"] for run in runs)])
    out.mkdir(parents=True, exist_ok=True)
    heading = f"# {task}: {len(runs)} runs compared\n\nmetric {metric}, scores in %.\n\n"
    (out / REPORT).write_text(heading + markdown_table(["group", *names], rows) + "\n", encoding="utf-8")
    _bar_chart(table, groups, task if metric == task else f"{task} ({metric})", out / CHART)
    return {"task": task, "metric": metric, "runs": table}


def _bar_chart(table: dict[str, dict[str, float | None]], groups: list[str], title: str, path: Path) -> None:
    """One cluster of bars per group, one bar per run."""
    width = 0.8 / len(table)
    with saved_figure(path, figsize=(max(5.0, 1.0 + 0.5 * len(groups) * len(table)), 3.5)) as figure:
        axes = figure.add_subplot()
        for index, (name, scores) in enumerate(table.items()):
            positions = [group + (index - (len(table) - 1) / 2) * width for group in range(len(groups))]
            values = [100 * (scores.get(group) or 0.0) for group in groups]
            axes.bar(positions, values, width, label=name)
        crowded = len(groups) > 4
        axes.set_xticks(range(len(groups)), groups, rotation=30 if crowded else 0, ha="right" if crowded else "center")
        axes.set_ylabel("score (%)")
        axes.set_ylim(0, 100)
        axes.set_title(title)
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not on them
