"""Training: stages, overfitting, bad data, checkpoints that survive SIGKILL, two processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from deepstack import DeepStackForConditionalGeneration, DeepStackProcessor, build_model
from deepstack.cli import main
from deepstack.train.config import load_config
from deepstack.train.data import IGNORE_INDEX, ConversationEncoder
from deepstack.train.loop import DataError, train
from tests.fixtures import tiny
from tests.fixtures import write_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]


def losses(run_dir: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def test_tiny_model_overfits_16_samples_and_answers_them(tmp_path):
    data = write_dataset(tmp_path, 16)
    config = write_config(tmp_path, data, optim={"max_steps": 120, "lr": 5e-3, "warmup_ratio": 0.05})
    result = train(load_config(config))
    assert result.final_loss < 0.05
    model = DeepStackForConditionalGeneration.from_pretrained(result.output_dir)
    processor = DeepStackProcessor.from_pretrained(result.output_dir)
    records = json.loads(data.read_text())
    correct = 0
    for record in records:
        image = Image.open(tmp_path / "images" / record["image"])
        inputs = processor(images=image, text="<image>\nWhat colour is the square?", use_chat_template=True)
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        answer = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        correct += answer == record["conversations"][1]["value"]
    assert correct == len(records)
    for name in ("metrics.jsonl", "loss.png", "summary.json", "train_config.yaml"):
        assert (result.output_dir / name).is_file(), name


def test_pretrain_then_finetune_from_yaml(tmp_path, capsys):
    data = write_dataset(tmp_path, 8, jsonl=True, name="captions.jsonl")
    pretrain = write_config(tmp_path, data, stage="pretrain", output={"dir": str(tmp_path / "pt")})
    torch.manual_seed(42)  # the run's optim.seed: the same initial weights; the frozen parts must not move
    before = build_model("tiny-clip", "tiny-llama", stack_mode="llm")[0].state_dict()
    assert main(["train", str(pretrain)]) == 0
    pretrained = DeepStackForConditionalGeneration.from_pretrained(tmp_path / "pt")
    after = pretrained.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if not k.startswith("projector"))
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("projector"))
    finetune = yaml.safe_load(pretrain.read_text())
    finetune.update(stage="finetune", model={"init_from": str(tmp_path / "pt")}, output={"dir": str(tmp_path / "ft")})
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(finetune))
    assert main(["train", str(tmp_path / "ft.yaml"), "--optim.max_steps=2"]) == 0
    tuned = DeepStackForConditionalGeneration.from_pretrained(tmp_path / "ft").state_dict()
    assert any(not torch.equal(tuned[k], after[k]) for k in after if k.startswith("language_model"))
    assert all(torch.equal(tuned[k], after[k]) for k in after if k.startswith("vision_tower"))
    assert json.loads((tmp_path / "ft" / "summary.json").read_text())["steps"] == 2
    assert "final loss" in capsys.readouterr().out


def test_lora_finetune_saves_a_merged_model(tmp_path):
    data = write_dataset(tmp_path, 8)
    config = write_config(tmp_path, data, model={"lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
    result = train(load_config(config, ["--optim.lr=1e-2"]))
    model = DeepStackForConditionalGeneration.from_pretrained(result.output_dir)
    assert not any("lora" in name for name in model.state_dict())


@pytest.mark.slow  # compiling takes ~30 s of CPU
def test_compiled_layers_train_the_same_model_as_eager_and_callbacks_see_it_run_as_written(tmp_path):
    data = write_dataset(tmp_path, 8)
    eager = train(load_config(write_config(tmp_path, data, output={"dir": str(tmp_path / "eager")})))
    config = load_config(write_config(tmp_path, data, output={"dir": str(tmp_path / "compiled")}),
                         ["--optim.compile=true"])
    seen = []

    def callback(step, model):  # a learning-curve evaluation: generation shapes, no new graphs
        layers = (*model.vision_layers, *model.decoder_layers)
        seen.append(all("forward" in vars(layer) for layer in layers))  # each layer's forward is the compiled one
        inputs = {"input_ids": torch.tensor([[1, 2, 3]])}
        assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape == (1, 5)

    compiled = train(config, callbacks=(callback,))
    assert seen == [True] * 4
    # the same losses and weights: fused kernels only round differently
    assert losses(compiled.output_dir) == pytest.approx(losses(eager.output_dir), rel=1e-4)
    ours = DeepStackForConditionalGeneration.from_pretrained(compiled.output_dir).state_dict()
    theirs = DeepStackForConditionalGeneration.from_pretrained(eager.output_dir).state_dict()
    assert all(torch.allclose(ours[name], theirs[name], atol=1e-4) for name in theirs)


def test_chat_labels_cover_only_the_answers():
    _, processor = tiny("llm")
    encoder = ConversationEncoder(processor, "finetune", 4096)
    turns = [
        {"from": "human", "value": "<image>\nfirst?"}, {"from": "gpt", "value": "one"},
        {"from": "human", "value": "second?"}, {"from": "gpt", "value": "two"},
    ]
    ids, labels = encoder.encode(turns)
    answers = processor.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert answers == "one<|end|>\ntwo<|end|>\n"
    plain_ids, plain_labels = ConversationEncoder(processor, "pretrain", 4096).encode(turns[:2])
    assert processor.decode([t for t, label in zip(plain_ids, plain_labels) if label != IGNORE_INDEX]) == "one<|end|>"
    assert "first?" not in processor.decode(plain_ids)  # the plain caption format drops the instruction


def write_bad_data(folder: Path) -> Path:
    write_dataset(folder, 8)  # good images 000..007 and a good train.json
    images = folder / "images"
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (images / "truncated.png").write_bytes((images / "000.png").read_bytes()[:60])
    good = {"from": "human", "value": "<image>\nq"}
    rows = [
        {"id": "ok", "image": "000.png", "conversations": [good, {"from": "gpt", "value": "red"}]},
        "{this is not json",
        {"id": "missing", "image": "nope.png", "conversations": [good, {"from": "gpt", "value": "x"}]},
        {"id": "corrupt", "image": "corrupt.png", "conversations": [good, {"from": "gpt", "value": "x"}]},
        {"id": "truncated", "image": "truncated.png", "conversations": [good, {"from": "gpt", "value": "x"}]},
        {"id": "no-answer", "image": "001.png", "conversations": [good]},
        {"id": "two-placeholders", "image": "002.png",
         "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "cut", "image": "003.png",
         "conversations": [{"from": "human", "value": "x" * 300 + "<image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "text-only", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    ]
    path = folder / "bad.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    (folder / "broken.json").write_text('[{"id": 1,\n "image": }]')
    return path


def test_every_bad_record_is_reported_with_file_line_and_reason_before_step_1(tmp_path):
    bad = write_bad_data(tmp_path)
    config = write_config(tmp_path, bad, data={"max_length": 200, "num_workers": 0, "sources": [
        {"path": str(bad), "image_folder": str(tmp_path / "images")},
        {"path": str(tmp_path / "broken.json"), "image_folder": str(tmp_path / "images")},
    ]})
    with pytest.raises(DataError) as error:
        train(load_config(config))
    message = str(error.value)
    expected = [
        f"{bad}:line 2: invalid JSON",
        f"{bad}:line 3 (id missing): image file not found",
        f"{bad}:line 4 (id corrupt): ",
        f"{bad}:line 5 (id truncated): ",
        f"{bad}:line 6 (id no-answer): no answer turn",
        f"{bad}:line 7 (id two-placeholders): 2 <image> placeholder(s) but 1 image(s)",
        f"{bad}:line 8 (id cut): its image tokens end at position",
        f"{tmp_path / 'broken.json'}:line 2: invalid JSON",
    ]
    for text in expected:
        assert text in message, text
    assert "id ok" not in message and "text-only" not in message
    assert len(error.value.problems) == 8
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before training


def test_skip_invalid_trains_on_the_rest_and_lists_what_it_skipped(tmp_path, capsys):
    bad = write_bad_data(tmp_path)
    config = write_config(tmp_path, bad, data={"max_length": 200}, optim={"global_batch_size": 2, "micro_batch_size": 2})
    assert main(["train", str(config), "--skip-invalid", "--optim.max_steps=1"]) == 0
    assert "skipped 7 invalid record(s)" in capsys.readouterr().out
    listed = (tmp_path / "run" / "invalid_records.jsonl").read_text().splitlines()
    assert len(listed) == 7 and json.loads(listed[1])["record_id"] == "missing"


def test_validate_data_command(tmp_path, capsys):
    bad = write_bad_data(tmp_path)
    config = write_config(tmp_path, bad, data={"max_length": 200})
    with pytest.raises(SystemExit):
        main(["validate-data", str(config)])
    out = capsys.readouterr().out
    assert "2 valid record(s), 7 invalid" in out and f"{bad}:line 6 (id no-answer)" in out


def test_config_errors_name_the_key(tmp_path):
    data = write_dataset(tmp_path, 8)
    config = write_config(tmp_path, data)
    with pytest.raises(ValueError, match=r"optim: unknown key\(s\) learning_rate"):
        load_config(config, ["--optim.learning_rate=1"])
    with pytest.raises(ValueError, match=r"global_batch_size=10 is not a multiple of optim.micro_batch_size=4"):
        load_config(config, ["--optim.global_batch_size=10"])


def test_a_value_that_cannot_work_is_refused_naming_the_key(tmp_path):
    config = write_config(tmp_path, write_dataset(tmp_path, 8))
    with pytest.raises(ValueError, match=r"optim\.warmup_ratio=2: input should be less than or equal to 1"):
        load_config(config, ["--optim.warmup_ratio=2"])
    with pytest.raises(ValueError, match=r"optim\.micro_batch_size=0: .*greater than or equal to 1"):
        load_config(config, ["--optim.micro_batch_size=0"])
    with pytest.raises(ValueError, match=r"optim\.lr='fast': input should be a valid number"):
        load_config(config, ["--optim.lr=fast"])
    with pytest.raises(ValueError) as error:  # every problem at once, each on its own line
        load_config(config, ["--stage=train", "--output.report_to=[tensorboard, mlflow]"])
    assert "stage='train': input should be 'pretrain' or 'finetune'" in str(error.value)
    assert "output.report_to[1]='mlflow': input should be 'tensorboard' or 'wandb'" in str(error.value)


def test_an_unknown_nested_key_is_refused_with_its_dotted_path(tmp_path):
    config = write_config(tmp_path, write_dataset(tmp_path, 8), model={"lora": {"r": 4, "rank": 8}})
    with pytest.raises(ValueError, match=r"model\.lora: unknown key\(s\) rank \(model\.lora\.rank=8\)") as error:
        load_config(config)
    assert "known keys are r, alpha, dropout, target_modules" in str(error.value)


def test_yaml_exponent_without_a_dot_reads_as_a_float(tmp_path):
    config = write_config(tmp_path, write_dataset(tmp_path, 8), optim={"lr": 0.5})
    config.write_text(config.read_text().replace("lr: 0.5", "lr: 2e-5"))
    assert yaml.safe_load(config.read_text())["optim"]["lr"] == "2e-5"  # YAML 1.1 wants a dot in a float
    loaded = load_config(config, ["--optim.vision_lr=1e-6"])
    assert loaded.optim.lr == 2e-05 and isinstance(loaded.optim.lr, float)
    assert loaded.optim.vision_lr == 1e-06 and isinstance(loaded.optim.vision_lr, float)


def _run(args, env_extra=None, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), **(env_extra or {})}
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


def test_sigkill_and_resume_gives_the_uninterrupted_loss_curve(tmp_path):
    data = write_dataset(tmp_path, 16)
    config = write_config(tmp_path, data, optim={"max_steps": 40, "lr": 3e-3, "global_batch_size": 4,
                                                 "micro_batch_size": 2},
                          output={"save_every": 5, "keep_last": 2})
    cli = [sys.executable, "-m", "deepstack.cli", "train", str(config)]
    reference = _run(cli + [f"--output.dir={tmp_path / 'reference'}"])
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()[-2000:]

    killed_dir = tmp_path / "killed"
    victim = _run(cli + [f"--output.dir={killed_dir}"])
    deadline = time.time() + 240
    while time.time() < deadline:  # kill somewhere after the third checkpoint began, mid-step or mid-save
        if any(killed_dir.glob("checkpoints/*step-00000015*")):
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    steps_before = max(losses(killed_dir))
    assert steps_before < 40, "the run must be cut short"
    resumed = _run(cli + [f"--output.dir={killed_dir}", "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]

    expected, got = losses(tmp_path / "reference"), losses(killed_dir)
    assert sorted(got) == list(range(1, 41))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    checkpoints = sorted(p.name for p in (killed_dir / "checkpoints").iterdir())
    assert checkpoints == ["step-00000035", "step-00000040"]  # keep_last=2, no temporary left over


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    data = write_dataset(tmp_path, 16)
    config = write_config(tmp_path, data, optim={"max_steps": 4, "global_batch_size": 8, "micro_batch_size": 4})
    single = _run([sys.executable, "-m", "deepstack.cli", "train", str(config), f"--output.dir={tmp_path / 'one'}"])
    assert single.wait(timeout=300) == 0, single.stderr.read().decode()[-2000:]
    double = _run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
         "-m", "deepstack.cli", "train", str(config), f"--output.dir={tmp_path / 'two'}"]
    )
    assert double.wait(timeout=300) == 0, double.stderr.read().decode()[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step


STOP_AT_TWO = """
import sys
from deepstack.train.config import load_config
from deepstack.train.loop import train

# the callbacks run on the main process only: the other must stop at the same step (or wait for it forever)
result = train(load_config(sys.argv[1]), callbacks=(lambda step, model: step == 2,))
print("steps", result.steps)
"""


@pytest.mark.slow
def test_a_callback_on_the_main_process_stops_every_process(tmp_path):
    data = write_dataset(tmp_path, 16)
    config = write_config(tmp_path, data, optim={"max_steps": 6, "global_batch_size": 8, "micro_batch_size": 4})
    (tmp_path / "stop.py").write_text(STOP_AT_TWO)
    double = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518",
                   str(tmp_path / "stop.py"), str(config)])
    assert double.wait(timeout=300) == 0, double.stderr.read().decode()[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert sorted(losses(run)) == [1, 2]  # no process went on to step 3
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["step-00000002"]
