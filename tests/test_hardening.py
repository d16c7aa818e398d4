"""Runs safe to leave overnight: one run per output folder, a lock against a second process, no code run from a
checkpoint, one image-size limit, images only from their folder, an unwritable output folder refused at once."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import deepstack.train.loop as loop
from deepstack.cli import main
from deepstack.model.processing import load_image
from deepstack.train.config import DataSource, load_config
from deepstack.train.data import validate
from deepstack.train.folder import HOLDER, LOCK
from deepstack.train.loop import train
from tests.fixtures import tiny, write_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]


def losses(run_dir: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file of a folder with its size and modification time, the lock's own files left out."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and p.name not in (LOCK, HOLDER)}


def saved_lrs(run_dir: Path) -> list[float]:
    return [json.loads((c / "trainer_state.json").read_text())["config"]["optim"]["lr"]
            for c in sorted((run_dir / "checkpoints").iterdir())]


def no_model(*args, **kwargs):
    raise AssertionError("the model was built before the output folder was checked")


def cli(*args: str, log: Path) -> subprocess.Popen:
    """``deepstack train ...`` as its own process; its stderr goes to ``log`` (a pipe could fill and block it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    with open(log, "wb") as stream:
        return subprocess.Popen([sys.executable, "-m", "deepstack.cli", "train", *args], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=stream)


def wait_for(condition, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


# ---- 1. a folder holding a run is continued or replaced, never mixed with another -------------------------
def test_a_folder_holding_a_run_is_refused_before_the_model_is_built(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path, write_dataset(tmp_path, 16), optim={"max_steps": 2})
    run = tmp_path / "run"
    train(load_config(config))  # run A, finished
    before = files(run)
    monkeypatch.setattr(loop, "setup_model", no_model)

    assert main(["train", str(config), "--optim.lr=0.001"]) == 2  # run B, same folder
    error = capsys.readouterr().err
    assert f"output.dir={run} already holds a training run (train_config.yaml, checkpoints, metrics.jsonl" in error
    assert "--resume to continue that run, --overwrite to delete it" in error

    assert main(["train", str(config), "--optim.lr=0.001", "--optim.seed=7", "--optim.max_steps=9", "--resume"]) == 2
    error = capsys.readouterr().err
    assert f"--resume continues the run saved in {run / 'checkpoints' / 'step-00000002'}" in error
    assert "differs from that run's in 2 setting(s)" in error  # the step budget may change
    assert "optim.lr: 0.003 -> 0.001" in error and "optim.seed: 42 -> 7" in error

    assert main(["train", str(config), "--resume", "--overwrite"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert files(run) == before  # nothing written, nothing built

    monkeypatch.undo()
    assert main(["train", str(config), "--optim.lr=0.001", "--optim.max_steps=3", "--overwrite"]) == 0
    assert sorted(losses(run)) == [1, 2, 3]
    assert saved_lrs(run) == [0.001]  # A's step-2 checkpoint is gone with the rest of A
    assert yaml.safe_load((run / "train_config.yaml").read_text())["optim"]["lr"] == 0.001


def test_resume_of_a_new_folder_starts_from_scratch_and_of_a_finished_run_changes_nothing(tmp_path):
    config = load_config(write_config(tmp_path, write_dataset(tmp_path, 16), optim={"max_steps": 2}))
    first = train(config, resume=True)  # nothing to resume: step 1 onwards, as without --resume
    assert sorted(losses(first.output_dir)) == [1, 2]
    before = files(first.output_dir / "checkpoints")
    again = train(config, resume=True)  # finished already: no step, no new save
    assert again.final_loss == first.final_loss and files(first.output_dir / "checkpoints") == before


def test_overwrite_keeps_what_the_run_reads(tmp_path):
    data = write_dataset(tmp_path / "run", 16)  # the data inside the output folder
    config = load_config(write_config(tmp_path, data, optim={"max_steps": 1}))
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"--overwrite would delete .* data.sources\[0\].path"):
        train(config, overwrite=True)
    assert data.is_file()


@pytest.mark.slow
def test_a_run_killed_after_reusing_a_folder_resumes_only_itself(tmp_path):
    """A finished run A; run B into its folder (refused, then --overwrite), killed at step 12, then resumed:
    B's own steps 1..40 and checkpoints, nothing of A."""
    data = write_dataset(tmp_path, 16)
    config = write_config(tmp_path, data, optim={"max_steps": 4, "global_batch_size": 4, "micro_batch_size": 2})
    run = tmp_path / "run"
    train(load_config(config))  # run A
    b = [str(config), "--optim.lr=0.001", "--optim.max_steps=40", "--output.save_every=4", "--output.keep_last=2"]

    refused = cli(*b, log=tmp_path / "refused.log")
    assert refused.wait(timeout=300) == 2
    assert f"output.dir={run} already holds a training run" in (tmp_path / "refused.log").read_text()

    victim = cli(*b, "--overwrite", log=tmp_path / "victim.log")
    wait_for(lambda: any(run.glob("checkpoints/*step-00000012*")) or victim.poll() is not None)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, (tmp_path / "victim.log").read_text()[-2000:]
    assert max(losses(run)) < 40, "the run must be cut short"

    resumed = cli(*b, "--resume", log=tmp_path / "resumed.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 41))
    assert all(row["lr"] <= 0.001 for row in rows)  # B's schedule from step 1 (A's lr was 0.003)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000036", "step-00000040"]
    assert saved_lrs(run) == [0.001, 0.001]


# ---- 2. one run at a time in a folder --------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_in_a_busy_folder_stops_at_once_and_a_killed_runs_lock_does_not_block(tmp_path):
    config = write_config(tmp_path, write_dataset(tmp_path, 16),
                          optim={"max_steps": 100_000}, output={"save_every": 10**6})
    run = tmp_path / "run"
    first = cli(str(config), log=tmp_path / "first.log")
    try:
        wait_for(lambda: (run / "metrics.jsonl").is_file() or first.poll() is not None)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        holder = json.loads((run / HOLDER).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()

        second = cli(str(config), log=tmp_path / "second.log")
        assert second.wait(timeout=300) == 2
        error = (tmp_path / "second.log").read_text()
        assert f"output.dir={run} is in use by another training run (process {first.pid} on host " in error
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    third = cli(str(config), "--resume", "--optim.max_steps=3", log=tmp_path / "third.log")  # the lock is stale
    assert third.wait(timeout=300) == 0, (tmp_path / "third.log").read_text()[-2000:]
    assert sorted(losses(run)) == [1, 2, 3]
    assert not (run / HOLDER).exists()  # released at the end


# ---- 3. resume runs no code from a checkpoint ------------------------------------------------------------
class RunsCode:
    """A pickle that creates a file when it is loaded (a stand-in for any code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("planted", ["optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"])
def test_resume_does_not_run_code_planted_in_a_checkpoint(tmp_path, planted):
    config = write_config(tmp_path, write_dataset(tmp_path, 16), optim={"max_steps": 2})
    run = tmp_path / "run"
    train(load_config(config))
    checkpoint = run / "checkpoints" / "step-00000002"
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # the scheduler's state is JSON in trainer_state.json
    assert "scheduler" in json.loads((checkpoint / "trainer_state.json").read_text())
    marker = tmp_path / "code-ran"
    plant = RunsCode(marker)
    call, arguments = plant.__reduce__()  # what an unpickler would run: it does create the marker
    call(*arguments).close()
    assert marker.exists()
    marker.unlink()
    torch.save(plant, checkpoint / planted)

    with pytest.raises(ValueError, match="unpickling (it )?(can|could) run arbitrary code"):
        train(load_config(config, ["--optim.max_steps=4"]), resume=True)
    assert not marker.exists()


def test_resume_extends_a_run_from_its_json_scheduler_state(tmp_path):
    """Resumed with a longer budget, the run goes on from its checkpoint and its scheduler's step."""
    config = write_config(tmp_path, write_dataset(tmp_path, 16), optim={"max_steps": 2, "warmup_ratio": 0.5})
    run = tmp_path / "run"
    train(load_config(config))
    train(load_config(config, ["--optim.max_steps=4"]), resume=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    state = json.loads((run / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state["scheduler"]["last_epoch"] == 4 and state["config"]["optim"]["max_steps"] == 4


# ---- 4. the data check and the loader share one image-size limit ----------------------------------------
def test_an_image_the_loader_refuses_as_too_large_is_reported_by_validation(tmp_path, capsys):
    data = write_dataset(tmp_path, 8)
    Image.new("1", (9000, 9000)).save(tmp_path / "images" / "huge.png")  # 81M pixels, a few KB on disk
    records = json.loads(data.read_text())
    records[0]["image"] = "huge.png"
    data.write_text(json.dumps(records))
    config = write_config(tmp_path, data)
    with pytest.raises(SystemExit):
        main(["validate-data", str(config)])
    out = capsys.readouterr().out
    huge = tmp_path / "images" / "huge.png"
    assert f"{data}:record 0 (id 000): {huge}: image too large" in out and "7 valid record(s), 1 invalid" in out
    with pytest.raises(ValueError) as error:
        load_image(huge)
    assert f"{huge}: image too large" in str(error.value)  # the same words as training would say


# ---- 5. images are read from their folder only ----------------------------------------------------------
def test_image_paths_that_leave_the_image_folder_are_refused_unless_allowed(tmp_path):
    write_dataset(tmp_path / "data", 2)
    images = tmp_path / "data" / "images"
    shutil.copy(images / "000.png", tmp_path / "outside.png")
    (images / "link.png").symlink_to(tmp_path / "outside.png")
    question = {"from": "human", "value": "<image>\nWhat colour is the square?"}
    names = {"inside": "sub/../000.png", "parent": "../../outside.png", "absolute": str(tmp_path / "outside.png"),
             "link": "link.png", "passwd": "../../../../../../../../etc/passwd"}
    records = [{"id": key, "image": name, "conversations": [question, {"from": "gpt", "value": "red"}]}
               for key, name in names.items()]
    (images / "sub").mkdir()
    path = tmp_path / "data" / "records.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    _, processor = tiny("llm")

    source = DataSource(path=str(path), image_folder=str(images))
    items, problems = validate([source], processor, "finetune", 200)
    assert len(items[0]) == 1
    assert [problem.record_id for problem in problems] == ["parent", "absolute", "link", "passwd"]
    for problem in problems:
        assert f"{path}:line " in str(problem) and "is outside the source's image_folder" in problem.reason
        assert "set allow_outside: true on this data source" in problem.reason

    allowed = DataSource(path=str(path), image_folder=str(images), allow_outside=True)
    items, problems = validate([allowed], processor, "finetune", 200)
    assert len(items[0]) == 4 and [problem.record_id for problem in problems] == ["passwd"]  # not an image
    assert "outside" not in problems[0].reason


# ---- 6. an output folder that cannot be written fails before the model is built --------------------------
def test_an_output_folder_that_cannot_be_written_is_refused_at_once(tmp_path, monkeypatch):
    config = write_config(tmp_path, write_dataset(tmp_path, 8))
    monkeypatch.setattr(loop, "setup_model", no_model)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match=re.escape(f"output.dir={a_file} is a file, not a folder")):
        train(load_config(config, [f"--output.dir={a_file}"]))
    message = f"output.dir={a_file / 'run'} cannot be created: {a_file} is a file, not a folder"
    with pytest.raises(ValueError, match=re.escape(message)):
        train(load_config(config, [f"--output.dir={a_file / 'run'}"]))

    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    immutable = (os.access(locked, os.W_OK) and shutil.which("chattr") is not None
                 and subprocess.run(["chattr", "+i", str(locked)]).returncode == 0)
    try:  # root writes to a 0o555 folder: then an immutable one stands in for it
        if os.access(locked, os.W_OK):
            pytest.skip("no way to make a folder read-only for this user here")
        message = f"output.dir={locked / 'run'} cannot be created: {locked} is not writable"
        with pytest.raises(ValueError, match=re.escape(message)):
            train(load_config(config, [f"--output.dir={locked / 'run'}"]))
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o755)
    assert not (locked / "run").exists()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("--optim.micro_batch_size=0", "optim.micro_batch_size=0"),
        ("--optim.global_batch_size=-8", "optim.global_batch_size=-8"),
        ("--output.save_every=0", "output.save_every=0"),
        ("--output.log_every=0", "output.log_every=0"),
        ("--optim.max_steps=-3", "optim.max_steps=-3"),
        ("--optim.epochs=0", "optim.epochs=0"),
        ("--model.train_vision=maybe", "model.train_vision='maybe'"),
        ("--optim.max_steps=2.5", "optim.max_steps=2.5"),
        ("--data.max_length=abc", "data.max_length='abc'"),
        ("--output.report_to=tensorboard", "output.report_to='tensorboard'"),
        ("--output.keep_last=0", "output.keep_last=0"),
    ],
)
def test_every_number_and_flag_is_checked_when_the_config_is_read(tmp_path, override, named):
    from deepstack.train.config import load_config

    data = write_dataset(tmp_path, count=8)
    with pytest.raises(ValueError) as error:
        load_config(write_config(tmp_path, data), [override])
    assert named in str(error.value)


def test_a_negative_source_weight_is_refused_naming_the_source(tmp_path):
    from deepstack.train.config import load_config

    data = write_dataset(tmp_path, count=8)
    config = write_config(tmp_path, data, data={"sources": [{"path": str(data), "weight": -1}], "num_workers": 0})
    with pytest.raises(ValueError, match=r"data\.sources\.0\.weight=-1|data\.sources\[0\]\.weight=-1"):
        load_config(config)


WORKERS_SCRIPT = """
import os, sys, time
from pathlib import Path
from deepstack.research.recipe import in_processes

def job(path, threads=None):
    Path(path).write_text(str(os.getpid()))
    time.sleep(300)

if __name__ == "__main__":
    for _ in in_processes(job, [(sys.argv[1] + "/a",), (sys.argv[1] + "/b",)], 2):
        pass
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie waits for a parent to reap it: it runs no more


def test_the_workers_of_a_lab_or_demo_killed_with_sigkill_end_too(tmp_path):
    """The lab and the demo train in worker processes (``recipe.in_processes``); killed with SIGKILL, the parent
    cannot stop them, so they watch it and end: none goes on training beside a restarted run."""
    script = tmp_path / "workers.py"
    script.write_text(WORKERS_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=ROOT)
    files = [tmp_path / "a", tmp_path / "b"]
    deadline = time.monotonic() + 120
    while not all(path.exists() and path.read_text() for path in files):
        assert time.monotonic() < deadline and parent.poll() is None, "the workers did not start"
        time.sleep(0.2)
    workers = [int(path.read_text()) for path in files]
    assert all(_running(pid) for pid in workers)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 15
    while any(_running(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its parent"
        time.sleep(0.2)
