"""The benchmark's measuring tools, run on tiny models (the timed numbers of the real bench are in docs/)."""

import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

import deepstack.research.bench.measure as measure
from deepstack.model.tiny import tiny_text_config
from deepstack.research.bench import Bench, TokenClock, llm_prefill_flops_formula, peak_bytes, report, timed
from tests.fixtures import tiny, table_row

CPU = torch.device("cpu")


def _tiny_bench(repeats: int = 1) -> Bench:
    """A bench of tiny models (N = 16 image tokens, S = 4 stacks at hires_scale 2)."""
    return Bench(lambda mode, hires_scale: tiny(mode, hires_scale=hires_scale), CPU, repeats)


@pytest.fixture
def one_thread():
    """torch on one thread: on a busy machine a parallel kernel waits for its other threads far longer than a
    tiny model's work takes, and the time measured would be the machine's load, not the bench's measure."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_timed_gives_median_min_and_max_of_the_runs_after_a_warm_up():
    calls = []

    def sleep():
        calls.append(1)
        time.sleep(0.02)

    timing = timed(sleep, 3, CPU)
    assert len(calls) == 1 + 3 and timing["runs"] == 3
    assert 20 <= timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"] < 200


def test_a_long_call_keeps_its_first_run_and_stops_when_the_budget_is_spent(monkeypatch):
    monkeypatch.setattr(measure, "LONG_CALL_S", 0.01)
    monkeypatch.setattr(measure, "BUDGET_S", 0.05)
    calls = []

    def long_call():
        calls.append(1)
        time.sleep(0.03)

    timing = timed(long_call, 5, CPU)
    assert len(calls) == 1 and timing["runs"] == 1  # a second run would pass the budget: the first one counts
    assert 30 <= timing["median_ms"] < 300


def test_flop_formula_matches_torch_flop_counter_on_a_llama():
    config = tiny_text_config("llama", hidden_size=64, num_layers=3)
    model = AutoModelForCausalLM.from_config(config)
    tokens = 37
    with FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, config.vocab_size, (2, tokens)))
    counted = counter.get_total_flops()
    matmuls_only = llm_prefill_flops_formula(config, tokens, batch=2, attention=False)
    attention = llm_prefill_flops_formula(config, tokens, batch=2) - matmuls_only
    assert attention == 2 * 2 * 3 * 2 * tokens * tokens * 64  # QK^T and AV, 3 layers, batch 2
    # CPU attention kernels are not counted by torch; everything else is
    assert counted in (matmuls_only, matmuls_only + attention)


def test_peak_bytes_sees_a_transient_allocation():
    def allocate():
        big = torch.ones(1_000_000)  # 4 MB held, then freed
        return float(big.sum())

    peak = peak_bytes(allocate, CPU)
    assert 4_000_000 <= peak < 8_000_000


def test_report_checks_the_targets_from_the_measured_ratios():
    timing = lambda ms: {"median_ms": ms, "min_ms": ms, "max_ms": ms}  # noqa: E731
    row = lambda mode, prefill, tokens: {  # noqa: E731
        "mode": mode, "llm_image_tokens": tokens, "sequence_length_b1": tokens + 33, "llm_prefill_b1": timing(prefill),
        "llm_prefill_b8": timing(8 * prefill), "llm_prefill_peak_mb_b1": 10.0, "llm_prefill_peak_mb_b8": 80.0,
        "vision_b1": timing(5.0), "decode_tokens_per_s": {"median": 20.0}, "llm_prefill_gflops_counted": 1.0,
        "llm_prefill_gflops_formula": 1.2, "llm_prefill_gflops_formula_no_attention": 1.0,
    }
    results = {
        "device": "cpu", "threads": 2, "torch": "x", "vision": "v", "llm": "l", "repeats": 5,
        "modes": [row("none", 100.0, 576), {**row("llm", 101.0, 576), "injection": {"all_additions_ms": 2.0}},
                  row("global_hires_string", 450.0, 2880)],
        "paired": {"prefill_ratio_b1": {"median": 1.01}, "prefill_ratio_b8": {"median": 1.05},
                   "decode_rate_ratio": {"median": 0.99}},
        "scaling": [],
    }
    text = report(results)
    assert table_row(text, "llm prefill time <= 1.03 x none (b1, paired rounds, median ratio)")[1:] == ["1.010", "yes"]
    assert table_row(text, "llm prefill time <= 1.03 x none (b8, paired rounds, median ratio)")[1:] == ["1.050", "NO"]
    assert table_row(text, "global_hires_string prefill >= 4 x llm (b1)")[1:] == ["4.455", "yes"]
    assert table_row(text, "all stack additions <= 1% of LLM prefill (b1)")[1:] == ["0.020", "NO"]
    # each mode's row carries its measured numbers; what was not measured says so
    assert table_row(text, "global_hires_string") == [
        "global_hires_string", "2880", "2913", "450.0 [450.0-450.0]", "3600.0 [3600.0-3600.0]", "10",
        "5.0 [5.0-5.0]", "20.0", "-", "not profiled", "1.0 / 1.0 / 1.2"]
    assert "Device: cpu (2 threads), torch x; v; l; medians of 5 runs" in text


def test_llm_forward_does_not_copy_the_stacks_of_a_batch(images):
    """The bench's b8 peak-memory target: the stacks are handed to the injection as views, so a forward of
    `llm` holds at most a hidden-state copy more than `none`, never a copy of all S stacks."""
    llm, processor = tiny("llm")
    none, _ = tiny("none")
    none.load_state_dict(llm.state_dict())
    prompts = ["<image>\nq"] * 6
    inputs = processor(images=[images[i % 3] for i in range(6)], text=prompts)
    text = {k: v for k, v in inputs.items() if k != "pixel_values"}
    with torch.inference_mode():
        with_stacks = llm.get_image_features(inputs["pixel_values"])
        global_only = none.get_image_features(inputs["pixel_values"][:, :1])
        peak_llm = peak_bytes(lambda: llm(**text, mm_encoder_outputs={"image": with_stacks}), CPU)
        peak_none = peak_bytes(lambda: none(**text, mm_encoder_outputs={"image": global_only}), CPU)
    rows, width = 6 * 16, llm.config.text_config.hidden_size
    all_stacks = 4 * rows * width * 4
    hidden_state = text["input_ids"].numel() * width * 4
    assert peak_llm - peak_none < all_stacks
    assert peak_llm - peak_none <= 2 * hidden_state


def test_injection_cost_times_the_stack_additions_of_a_batch_of_images(images, monkeypatch, one_thread):
    """The bench's injection measure takes the image features as the model hands them to the decoder and
    times the S additions, nothing else: with each addition made 5 ms slower, the S = 4 of them take 20 ms more."""
    model, processor = tiny("llm")
    inputs = processor(images=images[:2], text=["<image>\nq", "<image>\nq"])
    add_rows, added = measure.add_rows, []

    def slow_add_rows(hidden, positions, rows):
        added.append((positions.numel(), tuple(rows.shape)))
        time.sleep(0.005)
        return add_rows(hidden, positions, rows)

    bench = _tiny_bench(repeats=1)
    with torch.inference_mode():
        features = model.get_image_features(inputs["pixel_values"])
        monkeypatch.setattr(measure, "add_rows", slow_add_rows)
        cost = bench.injection_cost(model, {"input_ids": inputs["input_ids"]}, features)
    width = model.config.text_config.hidden_size
    assert cost["stacks"] == 4 and 20 <= cost["all_additions_ms"] < 200
    assert set(added) == {(2 * 16, (2 * 16, width))}  # every image token of the batch, one row each
    assert len(added) == 4 * (1 + 4)  # S additions per call: a warm-up call and repeats * 4 timed ones


def test_decode_rate_times_the_decode_steps_inside_one_generate_call(images, one_thread):
    model, processor = tiny("llm")
    inputs = processor(images=images[:1], text="<image>\nq")
    text = {k: v for k, v in inputs.items() if k != "pixel_values"}
    bench = _tiny_bench(repeats=2)
    with torch.inference_mode():
        features = model.get_image_features(inputs["pixel_values"])
        clock = TokenClock(bench.device)
        model.generate(**text, mm_encoder_outputs={"image": features}, max_new_tokens=5, min_new_tokens=5,
                       do_sample=False, streamer=clock)
        rate = bench.decode_rate(model, text, features, new_tokens=4)
    assert len(clock.times) == 1 + 5  # the prompt, then each new token
    assert clock.decode_rate() == pytest.approx(4 / (clock.times[-1] - clock.times[1]))  # 4 steps after the 1st
    assert 0 < rate["min"] <= rate["median"] <= rate["max"] and rate["new_tokens"] == 4
    clock.times = clock.times[:2]
    with pytest.raises(ValueError, match="at least two new tokens"):
        clock.decode_rate()


def test_a_mode_is_measured_on_the_model_the_bench_is_given(one_thread):
    row = _tiny_bench(repeats=1).measure_mode("llm")
    assert row["mode"] == "llm" and row["llm_image_tokens"] == 16
    assert row["sequence_length_b1"] == row["sequence_length_b8"] > 16 + 32  # the image tokens and the prompt
    config = tiny("llm")[0].config.text_config
    assert row["llm_prefill_gflops_formula"] == llm_prefill_flops_formula(config, row["sequence_length_b1"], 1) / 1e9
    for key in ("llm_prefill_b1", "llm_prefill_b8", "vision_b1"):
        assert row[key]["runs"] == 1 and 0 < row[key]["min_ms"] <= row[key]["max_ms"] < 10_000
    assert row["train_step_b1"]["runs"] == 3  # at least 3 training steps, whatever the repeats
    assert row["llm_prefill_peak_mb_b8"] > row["llm_prefill_peak_mb_b1"] > 0  # 8 rows hold more than 1
    assert row["injection"]["stacks"] == 4 and row["decode_tokens_per_s"]["new_tokens"] == 64


def test_the_sweep_grows_the_string_modes_context_and_not_llms(one_thread):
    bench = _tiny_bench(repeats=1)
    llm = [bench.scaling("llm", scale) for scale in (1, 2)]
    string = [bench.scaling("global_hires_string", scale) for scale in (1, 2)]
    assert [row["stacks"] for row in llm] == [1, 4]
    assert llm[0]["sequence_length"] == llm[1]["sequence_length"]  # stacks go into layers, not the context
    assert string[1]["sequence_length"] - string[0]["sequence_length"] == 16 * (4 - 1)  # 16 tokens per hi-res view
