"""The lab's second round: tasks as values, learning curves (equal steps, equal time), the groups of the
local-detail task, the phase timer and the upgrade path (none -> llm)."""

import json
import math
import shutil
from dataclasses import asdict, replace

import pytest
import torch

from deepstack.cli import main
from deepstack.research.lab import GROUPS, claims, collect, lab, plot_curves, report, run_key, switch, task_of
from deepstack.model.builder import load_pretrained
from deepstack.model.processing import load_image
from deepstack.research.lab.probes import (gate_openings, gates_table, global_view_data, probe_questions, probe_table,
                                          run_probe)
from deepstack.research.lab.upgrade import records_loss, upgrade_and_evaluate
from deepstack.research.recipe import (FULL, Recipe, initial_model, run_config, score, train_and_evaluate,
                                      train_recipe)
from deepstack.research.tasks import TASKS, get_task
from tests.fixtures import table_row, tiny, write_dataset

TINY = Recipe(sizes={"train": 24, "val": 2, "test": 2}, steps=2, batch_size=8)
LOCAL = TINY.with_task("localdetail")


def test_every_task_has_the_common_interface_and_asks_the_questions_given(tmp_path):
    for name, task in TASKS.items():
        assert {kind for kind, _ in task.QUESTIONS.values()} == {"fine", "coarse"}, name
        assert task.ANSWERS.keys() == task.QUESTIONS.keys() and task.SPLITS.keys() == {"train", "val", "test"}
    assert len({task.TASK_VERSION for task in TASKS.values()}) == len(TASKS)  # runs of one never pass as the other's
    sizes = {"train": 2, "val": 1, "test": 3}
    get_task("localdetail").make_data(tmp_path, sizes=sizes, questions=("top-left", "colour"))
    train = json.loads((tmp_path / "train.json").read_text())
    assert all(len(record["conversations"]) == 4 for record in train)  # two questions, two turns each
    test = json.loads((tmp_path / "test.json").read_text())
    assert [record["question"] for record in test] == ["top-left", "colour"] * 3
    assert json.loads((tmp_path / "dataset.json").read_text())["questions"] == ["top-left", "colour"]
    with pytest.raises(ValueError, match="unknown question.s. pattern; choose from top-left"):
        get_task("localdetail").make_data(tmp_path / "bad", sizes={"train": 1}, questions=("pattern",))
    with pytest.raises(ValueError, match="unknown task 'v5'; choose from finedetail, localdetail"):
        get_task("v5")


def test_a_recipe_names_its_task_and_asks_its_questions():
    assert FULL.task == "finedetail" and FULL.questions == ("digit", "pattern", "colour", "shape")
    local = FULL.with_task("localdetail")
    assert local.questions == ("top-left", "top-right", "bottom-left", "bottom-right", "colour")
    assert local.steps == FULL.steps and local.sizes == FULL.sizes
    with pytest.raises(ValueError, match="Recipe.questions: pattern not a question of the localdetail task"):
        Recipe(task="localdetail", questions=("pattern",))
    with pytest.raises(ValueError, match="Recipe.curve_every=0"):
        Recipe(curve_every=0)


def test_a_lab_runs_one_task_and_its_groups_name_it(tmp_path, capsys):
    assert task_of(["v4_table5", "gate"]) == "localdetail" and task_of(["table7", "fig3a"]) is None
    # the default groups of a task: those made for it and those made for any task
    from deepstack.research.lab.runner import _checked

    assert _checked(None, "finedetail") == ["table7", "table6", "table5", "fig3a", "fig3b", "fig3c"]
    assert _checked(None, "localdetail") == list(GROUPS)
    assert main(["lab", "--out", str(tmp_path), "--groups", "v4_table5", "--task", "finedetail", "--report-only"]) == 2
    assert "lab group(s) v4_table5 (task localdetail) made for another task than finedetail" in capsys.readouterr().err
    arm = GROUPS["table6"].arms[2]
    assert run_key("finedetail", arm) == "llm" and run_key("localdetail", arm) == "localdetail/llm"


def _run(key, seed, fine, recipe, task, curve=None, **extra):
    run = {"key": key, "seed": seed, "fine_accuracy": fine, "coarse_accuracy": 1.0,
           "per_question": {"top-left": fine, "colour": 1.0}, "llm_image_tokens": 16, "visual_tokens_seen": 80,
           "train_seconds": 1.0, "prefill_ms": 1.0, "total_seconds": 2.0,
           "recipe": json.loads(json.dumps(asdict(recipe))), "task": recipe.task, "task_version": task.TASK_VERSION, **extra}
    if curve:
        run["curve"] = [{"step": step, "fine": value, "coarse": 1.0, "train_seconds_so_far": seconds}
                        for step, seconds, value in curve]
    return run


def test_runs_are_kept_per_task_and_old_records_count_for_the_default_task(tmp_path):
    old_record = _run("llm", 0, 0.5, TINY, get_task("finedetail"))
    for field in ("task", "projector_lr", "curve_every", "time_phases"):  # recorded before these fields existed
        old_record["recipe"].pop(field)
    old_record.pop("task")
    lines = [old_record, _run("localdetail/llm", 0, 0.7, LOCAL, get_task("localdetail")),
             _run("localdetail/none", 0, 0.2, replace(LOCAL, steps=9), get_task("localdetail"))]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    fine = lab(tmp_path, groups=["table6"], seeds=(0,), recipe=TINY, command="t", train=False)
    assert [row["seeds_done"] for row in fine["groups"]["table6"]["rows"]] == [[], [], [0]]
    local = lab(tmp_path, groups=["v4_ceiling"], seeds=(0,), recipe=LOCAL, command="t", train=False)
    rows = local["groups"]["v4_ceiling"]["rows"]
    assert [row["seeds_done"] for row in rows] == [[], [0], []]  # none ran with another recipe (9 steps)
    assert rows[1]["summary"]["fine"]["mean"] == 0.7  # the local-detail run, not the fine-detail one
    markdown = (tmp_path / "lab.md").read_text()
    assert "Task: `localdetail` (version 4" in markdown
    # fine, coarse, then the local-detail task's questions that were asked (top-left and colour)
    assert table_row(markdown, "llm (DeepStack-L)")[3:7] == ["70.0% ± 0.0%", "100.0% ± 0.0%", "70.0% ± 0.0%",
                                                             "100.0% ± 0.0%"]


def test_equal_steps_and_equal_time_are_read_from_the_curves(tmp_path):
    local = get_task("localdetail")
    recipe = replace(LOCAL, curve_every=50)
    # llm: 20 s for its 100 steps; the gated arm 40 s for the same steps (points: step, seconds, fine)
    fast = [(0, 0.0, 0.2), (50, 10.0, 0.6), (100, 20.0, 1.0)]
    slow = [(0, 0.0, 0.2), (50, 20.0, 0.4), (100, 40.0, 0.8)]
    gated = "localdetail/llm-stack_gate=scalar"
    done = {("localdetail/llm", 0): _run("localdetail/llm", 0, 0.9, recipe, local, fast),
            (gated, 0): _run(gated, 0, 0.8, recipe, local, slow)}
    results = collect(done, ["gate"], (0,), recipe)
    group = results["groups"]["gate"]
    assert group["equal_time_seconds"] == 20.0  # the cheapest arm's whole budget
    llm, gated, channel = group["rows"]
    assert llm["summary"]["fine_half_steps"]["mean"] == 0.6 and gated["summary"]["fine_half_steps"]["mean"] == 0.4
    assert llm["fine_equal_time"]["mean"] == 1.0 and gated["fine_equal_time"]["mean"] == 0.4  # 20 s of its 40
    assert channel["summary"] is None and "fine_equal_time" not in channel
    results["command"] = "t"
    markdown = report(results)
    assert table_row(markdown, "stack_gate=scalar")[-2:] == ["40.0% ± 0.0%", "40.0% ± 0.0%"]
    assert "fine, val, at 20 s" in markdown and "![learning curves](lab-curves-gate.png)" in markdown
    verdict = {claim["claim"]: claim["verdict"] for claim in results["claims"]}
    assert verdict["stack_gate=scalar level with llm on fine questions at the full budget (the gate opens)"] == "no"
    plot_curves(group, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_speed_claims_compare_the_curves_at_half_the_steps():
    stat = lambda mean: {"mean": mean, "std": 0.01, "values": [mean]}  # noqa: E731
    rows = [{"key": "llm", "summary": {"fine": stat(0.9), "fine_half_steps": stat(0.4)}},
            {"key": "llm-stack_norm=rms", "summary": {"fine": stat(0.9), "fine_half_steps": stat(0.7)}},
            {"key": "llm-projector_lr=0.002", "summary": {"fine": stat(0.9), "fine_half_steps": stat(0.41)}}]
    checked = claims({"local_speed": {"rows": rows}})
    verdicts = {claim["claim"].split(" learns")[0]: claim["verdict"] for claim in checked}
    assert verdicts == {"stack_norm=rms": "yes", "projector lr 2e-3": "not separated"}


def test_switching_a_none_model_to_llm_keeps_its_weights_and_a_closed_gate_keeps_its_loss(tmp_path):
    data = write_dataset(tmp_path, 8)
    model, processor = tiny("none")
    model.save_pretrained(tmp_path / "none")
    processor.save_pretrained(tmp_path / "none")
    plain = switch(tmp_path / "none", tmp_path / "llm", "llm")
    gated = switch(tmp_path / "none", tmp_path / "gated", "llm", stack_gate="scalar")
    switched, switched_processor = load_pretrained(plain)
    assert switched.config.stack_mode == "llm" and switched_processor.stack_mode == "llm"
    assert switched.state_dict().keys() == model.state_dict().keys()  # the paper's llm adds no weight
    loss = records_loss(tmp_path / "none", data, tmp_path / "images")
    assert records_loss(gated, data, tmp_path / "images") == loss  # tanh(0) = 0: the stacks add nothing yet
    assert records_loss(plain, data, tmp_path / "images") != loss  # the stacks go in at once


def test_the_recipe_records_the_learning_curve_and_where_the_time_goes(tmp_path):
    recipe = replace(LOCAL, steps=3, curve_every=2, time_phases=True)
    get_task("localdetail").make_data(tmp_path / "data", sizes=recipe.sizes)
    init = initial_model("llm", tmp_path / "data", tmp_path, 0, recipe)
    config = run_config(init, tmp_path / "data", tmp_path / "trained", 0, recipe)
    trained = train_recipe(config, tmp_path / "data", recipe)
    assert [point["step"] for point in trained.curve] == [0, 2, 3]  # the untrained model, every 2 steps, the last
    seconds = [point["train_seconds_so_far"] for point in trained.curve]
    assert seconds[0] == 0 and seconds[1] < seconds[2] <= trained.train_seconds < trained.result.seconds
    assert set(trained.curve[1]["per_question"]) == set(recipe.questions)
    phases = trained.phase_seconds
    assert phases["steps"] == 2  # the first step is not timed
    measured = [phases[name] for name in ("data", "vision_forward", "llm_forward", "llm_backward", "optimizer")]
    assert all(value > 0 for value in measured) and sum(measured) <= phases["step"]
    assert phases["other"] == pytest.approx(phases["step"] - sum(measured), abs=1e-4)
    # set-up and the first step, then the timed steps: both within the training's time (curve points aside)
    assert 0 < phases["until_first_step"]
    assert phases["until_first_step"] + phases["steps"] * phases["step"] <= trained.result.seconds + 0.01


def test_a_run_stops_where_its_learning_curve_reaches_a_plateau(tmp_path):
    # nothing learns at lr 0: the validation accuracy of steps 2, 3 and 4 does not rise above that of step 1, so
    # the run stops at step 4 of its 10
    recipe = replace(LOCAL, steps=10, curve_every=1, stop_on_plateau=True, lr=0.0, vision_lr=0.0)
    get_task("localdetail").make_data(tmp_path / "data", sizes=recipe.sizes)
    row = train_and_evaluate("llm", tmp_path / "data", tmp_path / "run", 0, recipe)
    assert [point["step"] for point in row["curve"]] == [0, 1, 2, 3, 4]
    assert len({point["fine"] for point in row["curve"][1:]}) == 1
    assert row["steps"] == 4 and row["max_steps"] == 10
    assert json.loads((tmp_path / "run" / "trained" / "summary.json").read_text())["steps"] == 4
    with pytest.raises(ValueError, match="set curve_every"):
        replace(LOCAL, stop_on_plateau=True)


@pytest.mark.slow
def test_the_upgrade_path_trains_none_then_llm_with_one_curve(tmp_path):
    recipe = replace(LOCAL, steps=4, curve_every=1)
    get_task("localdetail").make_data(tmp_path / "data", sizes=recipe.sizes)
    row = upgrade_and_evaluate(tmp_path / "data", tmp_path / "run", 0, recipe, at=0.5, stack_gate="scalar")
    assert row["mode"] == "llm" and row["visual_tokens_seen"] == 80
    upgrade = row["upgrade"]
    assert upgrade["steps_before"] == 2 and len(upgrade["first_losses"]) == 2
    assert upgrade["loss_before_switch"] == upgrade["loss_after_switch"]  # the gate starts closed
    assert [point["step"] for point in row["curve"]] == [0, 1, 2, 2, 3, 4]  # two points at the switch


def test_the_committed_first_round_report_rebuilds_unchanged_from_its_runs(tmp_path):
    """The fine-detail lab (docs/lab) stays as it was: its runs.jsonl, recorded before tasks, curves and recipe
    changes existed, still gives the same lab.md."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs" / "lab"
    (tmp_path / "runs.jsonl").write_text((docs / "runs.jsonl").read_text())
    command = (docs / "lab.md").read_text().splitlines()[2].removeprefix("Command: `").removesuffix("`  ")
    lab(tmp_path, seeds=(0, 1, 2), command=command, train=False)
    assert (tmp_path / "lab.md").read_text() == (docs / "lab.md").read_text()


def test_make_data_writes_the_task_named(tmp_path):
    assert main(["make-data", str(tmp_path / "v4"), "--task", "localdetail", "--quick"]) == 0
    written = json.loads((tmp_path / "v4" / "dataset.json").read_text())
    assert written["task"] == "localdetail" and written["version"] == 4
    assert "top-left" in written["questions"]
    with pytest.raises(SystemExit) as refused:  # argparse names the choices
        main(["make-data", str(tmp_path / "bad"), "--task", "nosuchtask"])
    assert refused.value.code == 2


def test_a_plateau_rule_replayed_on_the_curves_stops_where_the_accuracy_stops_rising():
    from deepstack.research.lab.stats import plateau_replay, plateau_stop

    def curve(values):
        return [{"step": 100 * index, "fine": value} for index, value in enumerate(values)]

    # best 0.30 at step 200; 0.305 is no rise of a point; 0.312 is (best 0.312, step 400); then 500, 600 and 700
    # stay below 0.322: three flat points, the rule stops at 700 and misses the rise to 0.40 at 800
    flat = curve([0.0, 0.20, 0.30, 0.305, 0.312, 0.315, 0.30, 0.319, 0.40])
    assert plateau_stop(flat) == {"step": 700, "fine": 0.319, "final": 0.40}
    rising = curve([0.0, 0.2, 0.3, 0.4, 0.5])
    assert plateau_stop(rising) == {"step": 400, "fine": 0.5, "final": 0.5}
    # the same arm's runs in two groups count once: 2 runs, 1200 steps, 100 saved
    row = {"key": "llm", "seeds_done": [0, 1], "curves": [flat, rising]}
    replay = plateau_replay({"a": {"rows": [row]}, "b": {"rows": [dict(row)]}})
    assert replay["runs"] == 2 and replay["stopped_early"] == 1
    assert replay["steps_saved"] == pytest.approx(100 / 1200)
    assert replay["mean_loss"] == pytest.approx((0.40 - 0.319) / 2) and replay["worst_loss"] == pytest.approx(0.081)
    results = {"command": "t", "recipe": asdict(LOCAL), "seeds": [0, 1], "compute_seconds": 60.0, "claims": [],
               "groups": {}, "plateau": replay}
    assert ("would have stopped 1 of these 2 runs early and saved 8% of their training steps" in report(results))
    assert plateau_replay({"a": {"rows": [{"key": "none", "seeds_done": [0]}]}}) is None


def test_a_probe_evaluates_the_labs_trained_weights_with_one_setting_changed(tmp_path):
    recipe = replace(LOCAL, sizes={"train": 8, "val": 2, "test": 4})
    lab_dir, data = tmp_path / "lab", tmp_path / "lab" / "data-localdetail"
    get_task("localdetail").make_data(data, sizes=recipe.sizes)
    init = initial_model("llm", data, tmp_path / "init", 0, recipe)
    trained = lab_dir / "models" / "localdetail" / "llm-seed0" / "trained"  # where the lab keeps llm, seed 0
    shutil.copytree(init, trained)
    rows = run_probe("stacks", lab_dir, seeds=(0, 1), recipe=recipe)  # seed 1 was not trained: skipped
    assert [(row["trained"], row["evaluated"], row["seed"]) for row in rows] == [
        ("llm (4 stacks)", f"{count} stack(s)", 0) for count in (1, 2, 3, 4)]
    assert rows[-1]["fine_accuracy"] == score(trained, data, recipe)["fine_accuracy"]  # its own setting
    original, processor = load_pretrained(trained)
    probed, _ = load_pretrained(lab_dir / "probes" / "stacks" / "llm-seed0" / "1_stack(s)")
    assert probed.config.num_stack_layers == 1 and original.config.num_stack_layers in (None, 4)
    assert all(torch.equal(value, probed.state_dict()[name]) for name, value in original.state_dict().items())
    sample = json.loads((data / "test.json").read_text())[0]
    inputs = processor(images=load_image(data / "images" / sample["image"]), text=f"{processor.image_token}\nwhich?")
    with torch.no_grad():
        assert not torch.allclose(original(**inputs).logits, probed(**inputs).logits)  # the change is applied

    made = [{"probe": "stacks", "trained": "llm (4 stacks)", "evaluated": evaluated, "seed": seed, "fine_accuracy": fine,
             "per_question": {"top-left": fine, "colour": 1.0}}
            for evaluated, seed, fine in [("1 stack(s)", 0, 0.4), ("1 stack(s)", 1, 0.5), ("4 stack(s)", 0, 0.5)]]
    assert probe_table("stacks", made).splitlines()[2] == (
        "| llm (4 stacks) | 45.0% ± 7.1% |  |  | 50.0% ± 0.0% | 0, 1 |")
    assert probe_questions("stacks", made).splitlines()[2:] == [
        "| llm (4 stacks) | 1 stack(s) | 45.0% | 100.0% |", "| llm (4 stacks) | 4 stack(s) | 50.0% | 100.0% |"]


def test_the_detail_probe_evaluates_on_images_that_hold_only_the_global_view(tmp_path):
    from PIL import Image

    recipe = replace(LOCAL, sizes={"train": 8, "val": 2, "test": 4})
    lab_dir, data = tmp_path / "lab", tmp_path / "lab" / "data-localdetail"
    get_task("localdetail").make_data(data, sizes=recipe.sizes)
    reduced = global_view_data(data, tmp_path / "reduced", 32)
    assert json.loads((reduced / "test.json").read_text()) == json.loads((data / "test.json").read_text())
    name = json.loads((data / "test.json").read_text())[0]["image"]
    original, made = Image.open(data / "images" / name).convert("RGB"), Image.open(reduced / "images" / name)
    assert made.size == original.size == (64, 64)
    # each 2x2 block is one pixel of the bicubic 32 px global view: no finer detail is left
    view = torch.tensor(list(original.resize((32, 32), Image.Resampling.BICUBIC).getdata())).view(32, 32, 3)
    pixels = torch.tensor(list(made.getdata())).view(64, 64, 3)
    assert torch.equal(pixels, view.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert not torch.equal(pixels, torch.tensor(list(original.getdata())).view(64, 64, 3))  # the detail is gone

    init = initial_model("llm", data, tmp_path / "init", 0, recipe)
    trained = lab_dir / "models" / "localdetail" / "llm-seed0" / "trained"  # the levels group's hi-res llm
    shutil.copytree(init, trained)
    rows = run_probe("detail", lab_dir, seeds=(0,), recipe=recipe)
    assert [(row["trained"], row["evaluated"]) for row in rows] == [
        ("llm (hi-res stacks)", "test images"), ("llm (hi-res stacks)", "global view only")]
    assert rows[0]["fine_accuracy"] == score(trained, data, recipe)["fine_accuracy"]
    assert rows[1]["fine_accuracy"] == score(trained, reduced, recipe)["fine_accuracy"]
    probed_images = lab_dir / "probes" / "global-view-data" / "images" / name  # where the probe evaluated
    assert torch.equal(torch.tensor(list(Image.open(probed_images).getdata())).view(64, 64, 3), pixels)


def test_the_gates_opening_is_read_from_the_trained_weights(tmp_path):
    model, processor = tiny("llm", stack_gate="channel")
    with torch.no_grad():
        model.stack_transform.gate.copy_(torch.tensor([[0.5, -0.5], [1.0, 0.0], [0.0, 0.0], [-2.0, 2.0]]).repeat_interleave(
            model.stack_transform.gate.shape[1] // 2, dim=1))
    folder = tmp_path / "models" / "localdetail" / "llm-stack_gate=channel-seed1" / "trained"
    model.save_pretrained(folder)
    rows = gate_openings(tmp_path, seeds=(0, 1))
    assert [(row["arm"], row["seed"]) for row in rows] == [("stack_gate=channel", 1)]
    expected = [math.tanh(0.5), math.tanh(1.0) / 2, 0.0, math.tanh(2.0)]
    assert rows[0]["opening"] == pytest.approx(expected, abs=1e-6)
    assert gates_table(rows).splitlines()[2] == "| stack_gate=channel | 0.462 | 0.381 | 0.000 | 0.964 | 1 |"

