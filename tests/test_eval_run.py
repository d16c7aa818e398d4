"""Benchmark runs: the sample benchmarks load cleanly and run end to end, every answer saved as it is made; a
killed run resumes where it stopped with the same answers; batching does not change an answer; predictions
from any system are scored the same way, and a file that does not cover the benchmark exactly is refused."""

import json
import shutil
from pathlib import Path

import pytest

from deepstack.eval.benchmark import compare, load_task, read_predictions, run_benchmark, score_predictions
from deepstack.eval.samples import SAMPLE_DATA, write_docvqa, write_samples
from deepstack.eval.loaders import TASKS, score
from deepstack.model.builder import load_pretrained
from tests.fixtures import tiny

TOKENS = 4  # answers of a random tiny model are noise; a few tokens exercise the whole path


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    return write_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="module")
def model():
    return tiny("llm")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(model, task, data, out, **kwargs) -> dict:
    return run_benchmark(*model, task, data, out, max_new_tokens=TOKENS, progress=False, **kwargs)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def write_predictions(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"question_id": q, "prediction": p}) + "\n" for q, p in pairs))
    return path


@pytest.mark.parametrize("task", list(SAMPLE_DATA))
def test_each_sample_set_loads_with_its_loader_without_problems(samples, task):
    loaded = TASKS[task].load(samples[task])
    assert loaded.problems == []
    assert 20 <= len(loaded.items) <= 40


def test_sample_sets_are_in_the_native_formats(samples):
    textvqa = json.loads((samples["textvqa"] / "TextVQA_0.5.1_val.json").read_text())["data"]
    assert all(len(record["answers"]) == 10 for record in textvqa)
    docvqa = json.loads((samples["docvqa"] / "val_v1.0.json").read_text())["data"]
    assert any(len(record["answers"]) > 1 for record in docvqa)
    chartqa = json.loads((samples["chartqa"] / "test_human.json").read_text())
    assert all(record["label"].isdigit() for record in chartqa)
    pope = [json.loads(line) for line in (samples["pope"] / "coco_pope_random.json").read_text().splitlines()]
    assert {record["label"] for record in pope} == {"yes", "no"}


@pytest.mark.parametrize("task", list(SAMPLE_DATA))
def test_gold_answers_score_full_marks(samples, task, tmp_path):
    items = TASKS[task].load(samples[task]).items
    predictions = write_predictions(tmp_path / "gold.jsonl", [(item.question_id, item.answers[0]) for item in items])
    assert score_predictions(task, samples[task], predictions, tmp_path / "report")["score"] == 1.0


@pytest.mark.parametrize("task", list(SAMPLE_DATA))
def test_each_sample_task_runs_end_to_end(model, samples, task, tmp_path):
    results = run(model, task, samples[task], tmp_path, limit=5, batch_size=4)
    saved = lines(tmp_path / "predictions.jsonl")
    items = {item.question_id: item for item in TASKS[task].load(samples[task], limit=5).items}
    assert [row["question_id"] for row in saved] == list(items)
    for row in saved:
        assert set(row) == {"question_id", "prediction", "answers", "score", "category"}
        assert row["score"] == score(row["prediction"], items[row["question_id"]])
        assert row["answers"] == list(items[row["question_id"]].answers)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == results
    assert results["task"] == task and results["count"] == 5 and results["skipped"] == 0
    assert results["score"] == pytest.approx(mean(row["score"] for row in saved))
    for category, group in results.get("categories", {}).items():  # InfoVQA's question types as well
        members = [row["score"] for row in saved
                   if category == row["category"] or category in items[row["question_id"]].groups]
        assert group["score"] == pytest.approx(mean(members)) and group["count"] == len(members)
    if task == "pope":
        assert results["pope"]["all"]["accuracy"] == pytest.approx(results["score"])
        assert results["pope"]["all"]["count"] == 5
    assert "| all " in (tmp_path / "results.md").read_text()


def test_results_name_the_saved_model(samples, tmp_path):
    built, processor = tiny("llm")
    built.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    results = run(load_pretrained(tmp_path / "model"), "llava", samples["llava"], tmp_path / "run", limit=2)
    assert results["model"] == str(tmp_path / "model")
    assert str(tmp_path / "model") in (tmp_path / "run" / "results.md").read_text()


def test_a_killed_run_resumes_where_it_stopped_with_the_same_answers(model, samples, tmp_path, capsys):
    whole = run(model, "llava", samples["llava"], tmp_path / "whole", limit=6, batch_size=2)
    written = (tmp_path / "whole" / "predictions.jsonl").read_text().splitlines(keepends=True)
    killed = tmp_path / "killed" / "predictions.jsonl"
    killed.parent.mkdir()
    killed.write_text("".join(written[:3]) + written[3][: len(written[3]) // 2])  # died writing line 4

    with pytest.raises(ValueError, match="--resume"):
        run(model, "llava", samples["llava"], tmp_path / "killed", limit=6)
    resumed = run(model, "llava", samples["llava"], tmp_path / "killed", limit=6, batch_size=2, resume=True)

    assert "line 4 was cut short" in capsys.readouterr().out
    final = killed.read_text().splitlines(keepends=True)
    assert final[:3] == written[:3]  # the answers made before the kill are kept, not made again
    by_id = {row["question_id"]: row for row in lines(tmp_path / "whole" / "predictions.jsonl")}
    assert sorted(row["question_id"] for row in lines(killed)) == sorted(by_id)  # each question once
    assert len(final) == 6
    assert all(row == by_id[row["question_id"]] for row in lines(killed))
    assert {key: resumed[key] for key in ("score", "categories", "count")} == {
        key: whole[key] for key in ("score", "categories", "count")
    }


def test_a_resumed_run_that_was_complete_answers_nothing_again(model, samples, tmp_path):
    run(model, "pope", samples["pope"], tmp_path, limit=3)
    before = (tmp_path / "predictions.jsonl").read_text()
    run(model, "pope", samples["pope"], tmp_path, limit=3, resume=True)
    assert (tmp_path / "predictions.jsonl").read_text() == before


def test_batched_answers_equal_one_at_a_time(model, samples, tmp_path):
    # TextVQA's two questions differ in length, so batches of 4 are left-padded
    one = run(model, "textvqa", samples["textvqa"], tmp_path / "one", limit=8, batch_size=1)
    four = run(model, "textvqa", samples["textvqa"], tmp_path / "four", limit=8, batch_size=4)
    assert lines(tmp_path / "one" / "predictions.jsonl") == lines(tmp_path / "four" / "predictions.jsonl")
    assert one["score"] == four["score"]


def test_skipped_records_are_counted_and_named_not_fatal(model, samples, tmp_path, capsys):
    data = tmp_path / "llava"
    shutil.copytree(samples["llava"].parent, data)
    questions = data / "questions.jsonl"
    broken = {"question_id": "lost", "image": "images/missing.png", "text": "What?", "answers": ["x"]}
    questions.write_text(json.dumps(broken) + "\n" + questions.read_text())
    results = run(model, "llava", questions, tmp_path / "run", limit=3)
    assert "3 items, 1 skipped" in capsys.readouterr().out
    assert results["count"] == 3 and results["skipped"] == 1
    assert "line 1" in results["problems"][0] and "missing.png" in results["problems"][0]
    assert "missing.png" in (tmp_path / "run" / "results.md").read_text()


def test_scoring_the_predictions_of_a_run_gives_the_runs_results(model, samples, tmp_path):
    # 14 POPE questions: all 12 of the random split and 2 of the popular one
    results = run(model, "pope", samples["pope"], tmp_path / "run", limit=14, batch_size=8)
    scored = score_predictions("pope", samples["pope"], tmp_path / "run" / "predictions.jsonl", tmp_path / "scored",
                               limit=14)
    shared = ("task", "metric", "count", "skipped", "problems", "score", "categories", "pope")
    assert {key: scored[key] for key in shared} == {key: results[key] for key in shared}
    assert set(results["pope"]) == {"all", "random", "popular"}
    assert json.loads((tmp_path / "scored" / "results.json").read_text()) == scored


def test_scoring_external_predictions(samples, tmp_path):
    items = TASKS["chartqa"].load(samples["chartqa"]).items
    right = {item.question_id for item in items[::3]}
    pairs = [(item.question_id, item.answers[0] if item.question_id in right else "no idea") for item in items]
    results = score_predictions("chartqa", samples["chartqa"], write_predictions(tmp_path / "p.jsonl", pairs),
                                tmp_path)
    assert results["score"] == pytest.approx(len(right) / len(items))
    for split in ("human", "augmented"):
        in_split = [item for item in items if item.category == split]
        expected = sum(item.question_id in right for item in in_split) / len(in_split)
        assert results["categories"][split] == {"score": pytest.approx(expected), "count": len(in_split)}


def test_predictions_that_miss_or_invent_ids_are_refused_naming_them(samples, tmp_path):
    items = TASKS["docvqa"].load(samples["docvqa"]).items
    pairs = [(item.question_id, "x") for item in items[1:]] + [("no-such-question", "x")]
    with pytest.raises(ValueError) as error:
        score_predictions("docvqa", samples["docvqa"], write_predictions(tmp_path / "p.jsonl", pairs), tmp_path)
    message = str(error.value)
    assert f"1 question(s) of docvqa have no prediction: '{items[0].question_id}'" in message
    assert "1 prediction(s) name question ids" in message and "'no-such-question'" in message


def test_a_long_list_of_missing_ids_shows_the_first_ten_and_the_count(samples, tmp_path):
    items = TASKS["docvqa"].load(samples["docvqa"]).items
    with pytest.raises(ValueError, match=r"24 question\(s\) of docvqa have no prediction: .*\.\.\. and 14 more"):
        score_predictions("docvqa", samples["docvqa"], write_predictions(tmp_path / "p.jsonl", []), tmp_path)
    assert len(items) == 24


def test_a_broken_prediction_line_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question_id": 1, "prediction": "a"}\n{"question_id": 2}\n')
    with pytest.raises(ValueError, match=r"p.jsonl, line 2: .*'question_id' and 'prediction'"):
        read_predictions(path)
    path.write_text('{"question_id": 1, "prediction": "a"}\n{"question_id": 1, "prediction": "b"}\n')
    with pytest.raises(ValueError, match="more than one prediction"):
        read_predictions(path)


def test_compare_puts_runs_side_by_side(samples, tmp_path):
    items = TASKS["pope"].load(samples["pope"]).items
    for name, prediction in (("gold", lambda item: item.answers[0]), ("always-yes", lambda item: "Yes.")):
        pairs = [(item.question_id, prediction(item)) for item in items]
        predictions = write_predictions(tmp_path / f"{name}.jsonl", pairs)
        score_predictions("pope", samples["pope"], predictions, tmp_path / name)
    comparison = compare([tmp_path / "gold", tmp_path / "always-yes"], tmp_path / "both")
    assert comparison["runs"]["gold"]["all"] == 1.0
    assert comparison["runs"]["always-yes"]["all"] == pytest.approx(0.5)
    table = (tmp_path / "both" / "results.md").read_text()
    rows = {cells[0]: cells[1:] for line in table.splitlines() if line.startswith("|")
            for cells in [[cell.strip() for cell in line.strip("|").split("|")]]}
    assert rows["group"] == ["gold", "always-yes"]
    assert rows["all"] == ["100.0", "50.0"] and rows["F1 random"] == ["100.0", "66.7"]
    assert (tmp_path / "both" / "results.png").stat().st_size > 0


def test_compare_refuses_runs_of_different_tasks(samples, tmp_path):
    for task in ("llava", "multiple_choice"):
        items = TASKS[task].load(samples[task]).items
        pairs = [(item.question_id, item.answers[0]) for item in items]
        score_predictions(task, samples[task], write_predictions(tmp_path / f"{task}.jsonl", pairs), tmp_path / task)
    with pytest.raises(ValueError, match="different tasks"):
        compare([tmp_path / "llava", tmp_path / "multiple_choice"], tmp_path / "both")


def test_the_docvqa_sample_grows_to_the_documents_asked_keeping_its_first_ones(samples, tmp_path):
    """The evaluation-speed bench asks for more questions than the 24 of the sample DocVQA set."""
    larger = write_docvqa(tmp_path / "larger", documents=22)
    records = json.loads((larger / "val_v1.0.json").read_text())["data"]
    first = json.loads((samples["docvqa"] / "val_v1.0.json").read_text())["data"]
    assert len(records) == 66 and len({record["image"] for record in records}) == 22
    assert records[:24] == first  # the same invoices and questions as write_samples', then more
    assert (larger / "documents" / "doc000.png").read_bytes() == (samples["docvqa"] / "documents" / "doc000.png").read_bytes()
    assert len(load_task("docvqa", larger, None, echo=False).items) == 66
