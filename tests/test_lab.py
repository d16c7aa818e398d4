"""`deepstack lab`: every arm x seed once, resumable, a report with mean ± std and the claims."""

import json
from dataclasses import replace

import pytest

from tests.fixtures import table_row
from deepstack.cli import main
from deepstack.research.recipe import Recipe
from deepstack.research.lab import GROUPS, claims, collect, lab, plot, report, summarise, unseparated

TINY = Recipe(sizes={"train": 24, "val": 4, "test": 6}, steps=2, batch_size=8)


@pytest.mark.slow
def test_lab_trains_each_model_once_per_seed_resumes_and_reports(tmp_path):
    results = lab(tmp_path, groups=["table6", "table5"], seeds=(0, 1), recipe=TINY, command="test", workers=2)
    lines = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    # table6 (none, dummy, llm) and table5 (2d_spatial = llm, 2d_grid, 1d_sequential): 5 models x 2 seeds
    assert sorted((line["key"], line["seed"]) for line in lines) == sorted(
        (key, seed) for key in ("none", "dummy", "llm", "llm-stack_sampling=2d_grid", "llm-stack_sampling=1d_sequential")
        for seed in (0, 1)
    )
    # a run is its initial model, its training and its test evaluation, each timed (to 0.01 s: three roundings
    # of up to 0.005 s each)
    assert all(0 < line["eval_seconds"]
               and line["train_seconds"] + line["eval_seconds"] <= line["total_seconds"] + 0.015 for line in lines)
    table6 = results["groups"]["table6"]["rows"]
    assert [row["visual_tokens_seen"] for row in table6] == [16, 16, 80]
    llm_fine = [line["fine_accuracy"] for line in lines if line["key"] == "llm"]
    assert table6[2]["summary"]["fine"]["values"] == llm_fine
    assert results["groups"]["table5"]["rows"][0]["summary"] == table6[2]["summary"]  # the same runs
    markdown = (tmp_path / "lab.md").read_text()
    for group in ("table6", "table5"):
        assert GROUPS[group][0] in markdown
    assert "Command: `test`" in markdown and "dummy no better than none" in markdown
    assert (tmp_path / "lab.png").stat().st_size > 10_000
    assert "loss" in (tmp_path / "models" / "dummy-seed1" / "run.log").read_text()  # a worker's output

    before = (tmp_path / "runs.jsonl").read_text()
    again = lab(tmp_path, groups=["table6"], seeds=(0, 1), recipe=TINY, command="test")
    assert (tmp_path / "runs.jsonl").read_text() == before  # nothing retrained
    assert again["groups"]["table6"] == results["groups"]["table6"]

    # a lab asked for a third seed that has not run yet reports what it has, and says so
    partial = lab(tmp_path, groups=["table6"], seeds=(0, 1, 2), recipe=TINY, command="test", train=False)
    assert (tmp_path / "runs.jsonl").read_text() == before
    assert not partial["complete"] and partial["groups"]["table6"]["rows"][1]["seeds_done"] == [0, 1]
    markdown = (tmp_path / "lab.md").read_text()
    assert "**Not finished**" in markdown and table_row(markdown, "dummy (seeds 0, 1)")[1:3] == ["16", "16"]


def test_summarise_gives_mean_and_sample_std():
    runs = [{"fine_accuracy": f, "coarse_accuracy": 1.0, "per_question": {"digit": f}} for f in (0.2, 0.4, 0.9)]
    summary = summarise(runs)
    assert summary["fine"]["mean"] == pytest.approx(0.5)
    assert summary["fine"]["std"] == pytest.approx(((0.3**2 + 0.1**2 + 0.4**2) / 2) ** 0.5)
    assert summary["coarse"] == {"mean": 1.0, "std": 0.0, "values": [1.0, 1.0, 1.0]}


def _row(key, fine, coarse, std=0.01):
    stat = lambda mean: {"mean": mean, "std": std, "values": [mean]}  # noqa: E731
    return {"key": key, "summary": {"fine": stat(fine), "coarse": stat(coarse)}}


def test_claims_follow_the_measured_gaps_and_spreads():
    groups = {"table7": {"rows": [_row("none", 0.3, 0.9), _row("llm", 0.8, 0.91), _row("global_hires_string", 0.82, 0.9)]},
              "table6": {"rows": [_row("none", 0.3, 0.9), _row("dummy", 0.31, 0.9), _row("llm", 0.8, 0.91)]}}
    verdicts = {claim["claim"]: claim["holds"] for claim in claims(groups)}
    assert all(verdicts.values()) and len(verdicts) == 5
    groups["table7"]["rows"][1] = _row("llm", 0.31, 0.7)  # no gain on fine, a loss on coarse
    verdicts = {claim["claim"]: claim["holds"] for claim in claims(groups)}
    assert not verdicts["llm well above none on fine questions"]
    assert not verdicts["llm level with none on coarse questions"]
    noisy = {"table7": {"rows": [_row("none", 0.3, 0.9, std=0.2), _row("llm", 0.5, 0.9, std=0.2)]}}
    assert not claims(noisy)[0]["holds"]  # a 20-point gap inside a 28-point spread is not shown
    assert claims(noisy)[0]["verdict"] == "not separated"  # ... nor refuted
    groups["table7"]["rows"][1] = _row("llm", 0.1, 0.9)  # far below none: refuted
    assert next(c for c in claims(groups) if c["claim"].startswith("llm well above"))["verdict"] == "no"


def test_table5_claim_is_not_separated_when_the_samplings_tie():
    table5 = {"table5": {"rows": [_row("llm", 0.55, 0.99), _row("llm-stack_sampling=2d_grid", 0.554, 0.99),
                                  _row("llm-stack_sampling=1d_sequential", 0.40, 0.99)]}}
    verdicts = {claim["claim"].split(" on ")[0]: claim["verdict"] for claim in claims(table5)}
    assert verdicts == {"2d_spatial above 2d_grid": "not separated", "2d_spatial above 1d_sequential": "yes"}
    table5["table5"]["rows"][2] = _row("llm-stack_sampling=1d_sequential", 0.70, 0.99)
    assert claims(table5)[1]["verdict"] == "no"


def test_unknown_group_is_named(tmp_path, capsys):
    assert main(["lab", "--out", str(tmp_path), "--groups", "table9"]) == 2
    assert "unknown lab group(s) table9; choose from table7" in capsys.readouterr().err


def _fake_run(key, seed, fine):
    return {"key": key, "seed": seed, "fine_accuracy": fine, "coarse_accuracy": 1.0,
            "per_question": {"digit": 0.1, "pattern": 2 * fine - 0.1, "colour": 1.0, "shape": 1.0},
            "llm_image_tokens": 16, "visual_tokens_seen": 80 if key == "llm" else 16, "train_seconds": 1.0,
            "prefill_ms": 1.0, "total_seconds": 2.0}


def test_a_report_of_an_unfinished_lab_lists_what_has_not_run(tmp_path):
    done = {("none", 0): _fake_run("none", 0, 0.2), ("llm", 0): _fake_run("llm", 0, 0.55)}
    results = collect(done, ["table6"], (0, 1), TINY)
    results["command"] = "deepstack lab"
    rows = results["groups"]["table6"]["rows"]
    assert [row["seeds_done"] for row in rows] == [[0], [], [0]] and rows[1]["summary"] is None
    assert not results["complete"] and results["compute_seconds"] == 4.0
    markdown = report(results)
    assert table_row(markdown, "dummy (seeds none yet)")[1:] == [""] * 9  # no numbers without runs
    # the arm's numbers as collected: fine 20%, coarse 100%, digit 10%, pattern 2 * 20% - 10%, colour, shape, 1 s
    assert table_row(markdown, "none (seeds 0)") == [
        "none (seeds 0)", "16", "16", "20.0% ± 0.0%", "100.0% ± 0.0%", "10.0% ± 0.0%", "30.0% ± 0.0%",
        "100.0% ± 0.0%", "100.0% ± 0.0%", "1"]
    assert "dummy no better than none" not in markdown  # no claim without its runs
    plot(results, tmp_path / "lab.png")
    assert (tmp_path / "lab.png").stat().st_size > 5_000


def test_every_arm_of_the_full_lab_is_a_valid_model_and_each_model_is_trained_once():
    from deepstack import DeepStackConfig
    from deepstack.research.recipe import FULL
    from deepstack.model.tiny import tiny_text_config, tiny_vision_config

    from dataclasses import replace

    def models(task):
        return {arm.key: arm for group in GROUPS.values() if group.task in (None, task) for arm in group.arms}

    assert len(models("finedetail")) == 16  # 6 (Table 7) + dummy + 2 samplings + 3 starts + 1 interval + 3 stack counts
    # the fine-detail groups again, + 6 local_speed + 2 gates + 3 levels (vit_levels, with a gate, both) + 2 upgrades
    assert len(models("localdetail")) == 16 + 6 + 2 + 3 + 2
    for arm in models("localdetail").values():  # a setting that cannot work fails here, not an hour into the lab
        DeepStackConfig(
            vision_config=tiny_vision_config(**FULL.vision_size).to_dict(),
            text_config=tiny_text_config(**FULL.llm_size).to_dict(),
            stack_mode=arm.mode, **dict(arm.settings),
        )
        replace(FULL, **dict(arm.recipe))  # an arm's recipe changes are Recipe fields


def test_runs_of_another_task_version_or_recipe_are_not_reused(tmp_path):
    from dataclasses import asdict

    from deepstack.research.tasks.finedetail import TASK_VERSION

    recipe = json.loads(json.dumps(asdict(TINY)))
    lines = [
        {**_fake_run("none", 0, 0.2), "recipe": recipe, "task_version": TASK_VERSION},
        {**_fake_run("dummy", 0, 0.2), "recipe": recipe, "task_version": TASK_VERSION - 1},
        {**_fake_run("llm", 0, 0.5), "recipe": {**recipe, "steps": 999}, "task_version": TASK_VERSION},
    ]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = lab(tmp_path, groups=["table6"], seeds=(0,), recipe=TINY, command="test", train=False)
    assert [row["seeds_done"] for row in results["groups"]["table6"]["rows"]] == [[0], [], []]


def test_runs_that_differ_only_in_how_they_were_carried_out_are_the_same_runs(tmp_path):
    from dataclasses import asdict

    from deepstack.research.tasks.finedetail import TASK_VERSION

    compiled = json.loads(json.dumps(asdict(TINY)))
    compiled.update(compile=True, time_phases=True)  # compiled layers and phase timing: the same runs
    lines = [{**_fake_run("none", 0, 0.2), "recipe": compiled, "task_version": TASK_VERSION},
             {**_fake_run("llm", 0, 0.5), "recipe": {**compiled, "lr": 1.0}, "task_version": TASK_VERSION}]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = lab(tmp_path, groups=["table6"], seeds=(0,), recipe=TINY, command="test", train=False)
    assert [row["seeds_done"] for row in results["groups"]["table6"]["rows"]] == [[0], [], []]
    assert TINY.identity() == Recipe(**{**asdict(TINY), "compile": True}).identity() != asdict(TINY)


def test_the_wall_time_counts_runs_side_by_side_once_and_no_pause_between_them():
    from deepstack.research.lab.stats import wall_seconds

    def timed(start, end):
        return {"started_at": start, "finished_at": end}

    # two workers: 0-10 and 2-6 overlap (10 s), 9-15 overlaps the first's end (5 s more), a pause, then 100-130
    assert wall_seconds([timed(100, 130), timed(2, 6), timed(0, 10), timed(9, 15)]) == 45.0
    assert wall_seconds([timed(0, 10), {"total_seconds": 3.0}]) is None  # a run from before the times: unknown
    done = {("none", 0): {**_fake_run("none", 0, 0.2), **timed(0, 60)},
            ("llm", 0): {**_fake_run("llm", 0, 0.5), **timed(30, 120)}}
    results = collect(done, ["table6"], (0,), TINY)
    assert results["wall_seconds"] == 120.0
    assert "2 minutes of wall time (while at least one run was going)" in report({**results, "command": "test"})


def test_the_report_accounts_for_every_second_of_the_runs_that_timed_their_phases():
    phases = {"steps": 10, "step": 2.0, "data": 0.1, "vision_forward": 0.2, "llm_forward": 0.5, "llm_backward": 0.9,
              "optimizer": 0.1, "other": 0.2, "until_first_step": 6.0}
    # 30 s of training: 6 s to the end of step 1, 10 timed steps of 2 s, 4 s left for the final save
    times = {"phase_seconds": phases, "train_seconds": 30.0, "eval_seconds": 5.0}
    timed = {**_fake_run("none", 0, 0.2), **times, "total_seconds": 37.0}
    curved = {**_fake_run("llm", 0, 0.5), **times, "curve_eval_seconds": 1.0, "total_seconds": 38.0}
    untimed = {**_fake_run("dummy", 0, 0.2), "total_seconds": 50.0}  # a run without phases is not split
    done = {(run["key"], 0): run for run in (timed, curved, untimed)}
    split = collect(done, ["table6"], (0,), TINY)["time_split"]
    assert split["runs"] == 2
    assert split["seconds"] == {
        "initial model": 4.0, "set-up and first step": 12.0, "steps: data": 2.0, "steps: vision_forward": 4.0,
        "steps: llm_forward": 10.0, "steps: llm_backward": 18.0, "steps: optimizer": 2.0, "steps: other": 4.0,
        "learning curve": 1.0, "final save": 8.0, "test evaluation": 10.0,
    }
    assert sum(split["seconds"].values()) == timed["total_seconds"] + curved["total_seconds"]
    markdown = report({**collect(done, ["table6"], (0,), TINY), "command": "test"})
    assert "Summed over the 2 runs that timed their phases" in markdown
    assert table_row(markdown, "steps: llm_backward") == ["steps: llm_backward", "0.3", "24.0%"]
    assert table_row(markdown, "all") == ["all", "1.2", "100.0%"]
    untimed_only = collect({("dummy", 0): untimed}, ["table6"], (0,), TINY)
    assert untimed_only["time_split"] is None
    assert "Where the lab's time went" not in report({**untimed_only, "command": "test"})


def test_a_lab_cut_off_has_the_report_of_the_runs_that_finished(tmp_path, monkeypatch):
    import deepstack.research.lab.runner as runner

    finished = []
    run = runner._run

    def cut_off_after_the_first(*args, **kwargs):
        if finished:
            raise KeyboardInterrupt
        finished.append(run(*args, **kwargs))
        return finished[-1]

    monkeypatch.setattr(runner, "_run", cut_off_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        lab(tmp_path, groups=["table6"], seeds=(0,), recipe=TINY, command="test", report_dir=tmp_path / "report")
    markdown = (tmp_path / "report" / "lab.md").read_text()
    assert "**Not finished**" in markdown and table_row(markdown, "none")[1:3] == ["16", "16"]
    assert table_row(markdown, "dummy (seeds none yet)")[1:] == [""] * 9
    assert json.loads((tmp_path / "report" / "lab.json").read_text())["groups"]["table6"]["rows"][0]["seeds_done"] == [0]


def test_the_report_names_the_questions_that_do_not_tell_a_groups_arms_apart():
    # _fake_run: digit 10% for every arm (chance), pattern 2 * fine - 0.1, colour and shape 100%
    done = {("none", 0): _fake_run("none", 0, 0.2), ("dummy", 0): _fake_run("dummy", 0, 0.21),
            ("llm", 0): _fake_run("llm", 0, 0.55)}
    results = collect(done, ["table6"], (0,), TINY)
    results["command"] = "deepstack lab"
    rows = results["groups"]["table6"]["rows"]
    assert [question for question, _, _ in unseparated(rows)] == ["digit", "colour", "shape"]  # pattern differs
    assert [question for question, _, _ in unseparated(rows[:2])] == ["digit", "pattern", "colour", "shape"]
    assert unseparated(rows[2:]) == []  # one arm: nothing to compare
    assert "do not differ (means within the seeds' spread, at least 2 points): digit 10.0% to 10.0% (chance 10%)" in report(results)


def test_a_broken_line_in_runs_jsonl_is_named_and_nothing_is_overwritten(tmp_path, capsys):
    good = json.dumps({**_fake_run("none", 0, 0.2), "recipe": {}, "task_version": 0})
    (tmp_path / "runs.jsonl").write_text(good + "\n" + good[:40] + "\n")
    before = (tmp_path / "runs.jsonl").read_text()
    assert main(["lab", "--out", str(tmp_path), "--groups", "table6", "--report-only"]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'runs.jsonl'}, line 2: not a JSON run record" in error and "delete that line" in error
    assert (tmp_path / "runs.jsonl").read_text() == before and not (tmp_path / "lab.md").exists()


def test_the_lab_compiles_and_times_its_runs_unless_told_not_to_and_stops_on_a_plateau_when_told(tmp_path, monkeypatch):
    import deepstack.research.lab as lab_room

    recipes = []
    monkeypatch.setattr(lab_room, "lab", lambda out, recipe, **kwargs: recipes.append(recipe))
    assert main(["lab", "--out", str(tmp_path), "--groups", "table6"]) == 0
    assert main(["lab", "--out", str(tmp_path), "--groups", "table6", "--no-time-phases", "--no-compile"]) == 0
    assert [(recipe.compile, recipe.time_phases) for recipe in recipes] == [(True, True), (False, False)]
    # stopping on a plateau needs the learning curve: on by itself (steps/16), or every --curve-every steps
    assert main(["lab", "--out", str(tmp_path), "--groups", "table6", "--stop-on-plateau"]) == 0
    assert main(["lab", "--out", str(tmp_path), "--groups", "table6", "--stop-on-plateau", "--curve-every", "20"]) == 0
    assert [(recipe.stop_on_plateau, recipe.curve_every) for recipe in recipes] == [
        (False, None), (False, None), (True, 800 // 16), (True, 20)]


def test_a_lab_that_stops_on_a_plateau_reports_the_steps_its_runs_saved():
    # none stopped at 300 of 800 steps, llm at 600, dummy ran its 800: 1700 of 2400 steps run, 700 saved
    curve = [{"step": 0, "fine": 0.0, "train_seconds_so_far": 0.0},
             {"step": 100, "fine": 0.5, "train_seconds_so_far": 1.0}]
    done = {(key, 0): {**_fake_run(key, 0, 0.3), "steps": steps, "max_steps": 800, "curve": curve}
            for key, steps in (("none", 300), ("dummy", 800), ("llm", 600))}
    recipe = replace(TINY, curve_every=100, stop_on_plateau=True)
    results = collect(done, ["table6"], (0,), recipe)
    assert "plateau" not in results
    assert results["stopped"] == {"patience": 3, "gain": 0.01, "runs": 3, "stopped_early": 2,
                                  "mean_share": pytest.approx((300 / 800 + 1 + 600 / 800) / 3),
                                  "least_share": 300 / 800, "steps_saved": pytest.approx(700 / 2400)}
    markdown = report({**results, "command": "test"})
    assert "2 of these 3 runs stopped before their budget, after 71% of it on average (38% at least), 29% of all" \
           in markdown
    assert "stopped" not in collect(done, ["table6"], (0,), TINY)  # a lab that runs to the budget replays instead
