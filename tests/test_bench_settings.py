"""`deepstack bench --settings` (docs/bench/settings.md): the arms it times, each one's stand-in features driving
a real prefill, and its report's verdicts; the timed numbers of the real run are in docs/bench/settings.md."""

import torch

from deepstack.research.bench.hd import _prefill, stand_in_features
from deepstack.research.bench.settings import report_settings, variants
from tests.fixtures import table_row, tiny


def test_it_times_llm_and_every_model_setting_of_the_speed_and_gate_groups_not_the_training_ones():
    found = variants()
    assert found["llm"] == {}
    assert found["stack_norm=rms"] == {"stack_norm": "rms"}
    assert found["per-stack projectors"] == {"stack_projectors": "per_stack"}
    assert found["2 stacks x 2 layers"] == {"num_stack_layers": 2, "stack_layers_per_stack": 2}
    assert found["stack_gate=channel"] == {"stack_gate": "channel"}
    assert "projector lr 2e-3" not in found  # a learning rate: the same model
    assert len(found) == 8


def test_each_setting_builds_a_model_whose_prefill_runs_on_stand_in_features_of_its_shapes():
    for label, settings in variants().items():
        model, _ = tiny("llm", **settings)
        ids = torch.tensor([[1] + [model.config.image_token_id] * model.config.image_seq_length + [5, 6]])
        text = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.inference_mode():
            logits = _prefill(model, text, stand_in_features(model, 32, 32))().logits
        assert logits.shape[:2] == (1, 1), label  # the LM head on the last position only


def test_report_marks_each_setting_against_the_target():
    pairs = [{"mode": "llm", "settings": {}, "ratio": {"median": 1.01, "min": 0.98, "max": 1.04}},
             {"mode": "stack_norm=rms", "settings": {"stack_norm": "rms"},
              "ratio": {"median": 1.05, "min": 1.02, "max": 1.09}}]
    results = {"command": "deepstack bench --settings --out x", "wall_s": 100.0, "device": "cpu", "torch": "t",
               "threads": 1, "cpus": 2, "load_at_start": [1.0, 2.0, 3.0], "vision": "v", "llm": "l", "rounds": 6,
               "pairs": pairs}
    report = report_settings(results)
    assert "`deepstack bench --settings --out x`" in report
    assert table_row(report, "llm") == ["llm", "(defaults)", "1.010 [0.980-1.040]", "yes"]
    assert table_row(report, "stack_norm=rms") == ["stack_norm=rms", "stack_norm=rms", "1.050 [1.020-1.090]", "NO"]
