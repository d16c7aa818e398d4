"""Data-parallel evaluation: each process answers a consecutive shard of the questions, the first gathers every
process's part file into the one predictions.jsonl in question order and scores it once, so a run of two
processes writes the file and the scores of one process; a killed run of several processes resumes, with one
process or several, and asks only what is unanswered."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import deepstack.eval.benchmark as benchmark
from deepstack.cli import _without_option, main
from deepstack.eval.benchmark import run_benchmark
from deepstack.eval.parallel import gather, part_path, parts, shard
from deepstack.eval.samples import write_samples
from deepstack.model.builder import load_pretrained
from tests.fixtures import tiny

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 4


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    return write_samples(tmp_path_factory.mktemp("samples"))


def question_id(path, number, line) -> str:
    try:
        return json.loads(line)["question_id"]
    except json.JSONDecodeError:
        raise ValueError(f"{path}, line {number}: cut short") from None


def test_shards_are_consecutive_cover_every_item_once_and_differ_by_at_most_one():
    items = list("abcdefg")
    assert [shard(items, rank, 3) for rank in range(3)] == [list("abc"), list("de"), list("fg")]
    assert [shard(items[:2], rank, 3) for rank in range(3)] == [["a"], ["b"], []]
    assert shard(items, 0, 1) == items


def test_gather_moves_parts_in_question_order_and_drops_a_line_cut_short(tmp_path, capsys):
    path = tmp_path / "predictions.jsonl"
    line = {q: json.dumps({"question_id": q, "prediction": q.upper()}) for q in "abcdef"}
    path.write_text(line["a"] + "\n")
    part_path(path, 1).write_text(line["e"] + "\n" + line["d"] + "\n")
    part_path(path, 0).write_text(line["c"] + "\n" + line["b"] + "\n" + line["f"][:9])  # killed writing f
    gather(path, {q: index for index, q in enumerate("abcdef")}, question_id)
    assert path.read_text() == "".join(line[q] + "\n" for q in "abcde")
    assert parts(path) == []
    assert "predictions.part0.jsonl, line 3 was cut short" in capsys.readouterr().out


def test_gather_killed_after_writing_does_not_repeat_an_answer(tmp_path):
    path = tmp_path / "predictions.jsonl"
    line = {q: json.dumps({"question_id": q, "prediction": q}) for q in "abc"}
    path.write_text("".join(line[q] + "\n" for q in "abc"))  # already gathered; the part was not yet deleted
    part_path(path, 0).write_text(line["b"] + "\n")
    gather(path, {q: index for index, q in enumerate("abc")}, question_id)
    assert path.read_text() == "".join(line[q] + "\n" for q in "abc")


def test_a_killed_run_of_two_processes_resumes_in_one(samples, tmp_path, monkeypatch, capsys):
    model = tiny("llm")
    run = lambda out, **kwargs: run_benchmark(*model, "llava", samples["llava"], out, limit=6, batch_size=2,
                                              max_new_tokens=TOKENS, progress=False, **kwargs)
    whole = run(tmp_path / "whole")
    written = (tmp_path / "whole" / "predictions.jsonl").read_text().splitlines(keepends=True)
    # what two processes leave when killed: shards 0-2 and 3-5; the first died writing its third answer
    killed = tmp_path / "killed" / "predictions.jsonl"
    killed.parent.mkdir()
    part_path(killed, 0).write_text(written[0] + written[1] + written[2][:20])
    part_path(killed, 1).write_text(written[3])

    with pytest.raises(ValueError, match=r"predictions.part0.jsonl, predictions.part1.jsonl.*--resume"):
        run(tmp_path / "killed")
    asked = []
    answer_stream = benchmark.answer_stream
    monkeypatch.setattr(benchmark, "answer_stream", lambda m, p, questions, *args: answer_stream(
        m, p, (asked.append(prompt) or (images, prompt) for images, prompt in questions), *args))
    resumed = run(tmp_path / "killed", resume=True)

    assert len(asked) == 3  # questions 2, 4 and 5; the three answered before the kill are kept
    assert "line 3 was cut short" in capsys.readouterr().out
    assert killed.read_text() == "".join(written)  # the file one uninterrupted process writes
    assert parts(killed) == []
    assert {key: resumed[key] for key in ("score", "categories", "count")} == {
        key: whole[key] for key in ("score", "categories", "count")}


def test_the_command_relaunches_itself_without_its_processes_option():
    argv = ["eval", "--processes", "2", "--model", "m", "--processes=2", "--task", "llava"]
    assert _without_option(argv, "--processes") == ["eval", "--model", "m", "--task", "llava"]


def test_a_process_count_that_cannot_work_is_refused_naming_it(monkeypatch, capsys):
    command = ["eval", "--model", "m", "--task", "llava", "--data", "d"]
    assert main([*command, "--processes", "0"]) == 2
    assert "--processes 0: give a number of processes of at least 1" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "3")  # under a launcher that started 3
    assert main([*command, "--processes", "2"]) == 2
    assert "which started 3, leave it out" in capsys.readouterr().err


def _eval(model: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "deepstack.cli", "eval", "--model", str(model), "--task", "multidocvqa",
               "--data", str(data), "--out", str(out), "--batch-size", "1", "--max-new-tokens", "16", *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_two_processes_give_the_predictions_and_scores_of_one_and_resume_after_a_kill(samples, tmp_path):
    built, processor = tiny("llm")
    built.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    model, data = tmp_path / "model", samples["multidocvqa"]
    one = run_benchmark(*load_pretrained(model), "multidocvqa", data, tmp_path / "one", batch_size=1,
                        max_new_tokens=16, progress=False)

    two = _eval(model, data, tmp_path / "two", "--processes", "2")
    assert two.wait(timeout=300) == 0, two.stderr.read().decode()[-3000:]
    assert (tmp_path / "two" / "predictions.jsonl").read_text() == (tmp_path / "one" / "predictions.jsonl").read_text()
    assert json.loads((tmp_path / "two" / "results.json").read_text()) == one
    assert parts(tmp_path / "two" / "predictions.jsonl") == []

    victim = _eval(model, data, tmp_path / "killed", "--processes", "2")
    shards = [part_path(tmp_path / "killed" / "predictions.jsonl", rank) for rank in (0, 1)]
    deadline = time.monotonic() + 240
    while not all(part.is_file() and part.read_text().count("\n") >= 2 for part in shards):
        assert victim.poll() is None and time.monotonic() < deadline, "the run must be killed half-way"
        time.sleep(0.02)
    # the command, torch's launcher and both processes (the launcher starts each in a session of its own)
    for process in [psutil.Process(victim.pid), *psutil.Process(victim.pid).children(recursive=True)]:
        process.send_signal(signal.SIGKILL)
    victim.wait()
    answered = sum(part.read_text().count("\n") for part in shards)
    assert answered < one["count"]
    resumed = _eval(model, data, tmp_path / "killed", "--processes", "2", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-3000:]
    assert f"resuming: {answered} of {one['count']}" in resumed.stdout.read().decode()
    assert (tmp_path / "killed" / "predictions.jsonl").read_text() == (tmp_path / "one" / "predictions.jsonl").read_text()
    assert json.loads((tmp_path / "killed" / "results.json").read_text()) == one
