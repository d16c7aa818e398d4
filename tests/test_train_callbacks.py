"""Training callbacks: called after every optimizer step with the model, invisible to the training itself unless
one returns True, which stops it."""

import json

import torch
from safetensors.torch import load_file

from deepstack.train.config import load_config
from deepstack.train.loop import train
from tests.fixtures import write_config, write_dataset


def _weights(folder):
    return load_file(folder / "model.safetensors")


def test_a_callback_sees_every_step_with_the_model_and_a_noop_one_changes_no_weight(tmp_path):
    data = write_dataset(tmp_path, 16)
    for name in ("plain", "hooked"):
        (tmp_path / name).mkdir()
    plain = train(load_config(write_config(tmp_path / "plain", data, optim={"max_steps": 3, "seed": 3})))

    seen = []

    def evaluating(step, model):
        seen.append((step, model.training, type(model).__name__))
        model.eval()  # as an evaluation would; the loop must put it back in train mode
        with torch.no_grad():
            model.projector.linear_1.weight.sum()

    modes_during_training = []
    hooked = train(load_config(write_config(tmp_path / "hooked", data, optim={"max_steps": 3, "seed": 3})),
                   callbacks=(evaluating, lambda step, model: modes_during_training.append(model.training)))
    assert [step for step, _, _ in seen] == [1, 2, 3]
    assert all(training and name == "DeepStackForConditionalGeneration" for _, training, name in seen)
    assert modes_during_training == [False] * 3  # the second callback runs after the first, before the reset
    assert hooked.final_loss == plain.final_loss
    before, after = _weights(plain.output_dir), _weights(hooked.output_dir)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_a_callback_that_returns_true_stops_the_training_and_the_model_of_that_step_is_the_trained_one(tmp_path):
    data = write_dataset(tmp_path, 16)
    seen, weights = [], {}

    def stop_at_two(step, model):
        seen.append(step)
        weights[step] = {name: value.detach().clone() for name, value in model.state_dict().items()}
        return step == 2

    config = load_config(write_config(tmp_path, data, optim={"max_steps": 5, "seed": 3}, output={"log_every": 3}))
    result = train(config, callbacks=(lambda step, model: 1, stop_at_two))  # a truthy value that is not True: on
    assert seen == [1, 2] and result.steps == 2
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["final_loss"] == result.final_loss
    logged = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged] == [2]  # log_every 3: the stop's step is logged as the last
    assert logged[-1]["loss"] == result.final_loss
    saved = _weights(result.output_dir)
    for name, value in saved.items():
        assert torch.equal(value, weights[2][name]), name
    assert sorted(path.name for path in (result.output_dir / "checkpoints").iterdir()) == ["step-00000002"]
