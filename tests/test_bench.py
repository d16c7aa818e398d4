"""The benchmark's measuring tools (the timed numbers themselves are in docs/, not asserted here)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

from deepstack.research.bench import Bench, TokenClock, llm_prefill_flops_formula, peak_bytes, report
from deepstack.model.tiny import tiny_text_config


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

    peak = peak_bytes(allocate, torch.device("cpu"))
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
    assert "| llm prefill time <= 1.03 x none (b1, paired rounds, median ratio) | 1.010 | yes |" in text
    assert "| llm prefill time <= 1.03 x none (b8, paired rounds, median ratio) | 1.050 | NO |" in text
    assert "| global_hires_string prefill >= 4 x llm (b1) | 4.455 | yes |" in text
    assert "| all stack additions <= 1% of LLM prefill (b1) | 0.020 | NO |" in text


def test_llm_forward_does_not_copy_the_stacks_of_a_batch(images):
    """The bench's b8 peak-memory target: the stacks are handed to the injection as views, so a forward of
    `llm` holds at most a hidden-state copy more than `none`, never a copy of all S stacks."""
    from tests.fixtures import tiny

    llm, processor = tiny("llm")
    none, _ = tiny("none")
    none.load_state_dict(llm.state_dict())
    prompts = ["<image>\nq"] * 6
    inputs = processor(images=[images[i % 3] for i in range(6)], text=prompts)
    text = {k: v for k, v in inputs.items() if k != "pixel_values"}
    with torch.inference_mode():
        with_stacks = llm.get_image_features(inputs["pixel_values"])
        global_only = none.get_image_features(inputs["pixel_values"][:, :1])
        peak_llm = peak_bytes(lambda: llm(**text, mm_encoder_outputs={"image": with_stacks}), torch.device("cpu"))
        peak_none = peak_bytes(lambda: none(**text, mm_encoder_outputs={"image": global_only}), torch.device("cpu"))
    rows, width = 6 * 16, llm.config.text_config.hidden_size
    all_stacks = 4 * rows * width * 4
    hidden_state = text["input_ids"].numel() * width * 4
    assert peak_llm - peak_none < all_stacks
    assert peak_llm - peak_none <= 2 * hidden_state


def test_injection_cost_times_the_stack_additions_of_a_batch_of_images(images):
    """The bench's injection measure takes the image features as the model hands them to the decoder."""
    from tests.fixtures import tiny

    model, processor = tiny("llm")
    inputs = processor(images=images[:2], text=["<image>\nq", "<image>\nq"])
    bench = object.__new__(Bench)  # the measure needs no real-size parts
    bench.repeats, bench.device = 1, torch.device("cpu")
    with torch.inference_mode():
        features = model.get_image_features(inputs["pixel_values"])
        cost = bench._injection_cost(model, {"input_ids": inputs["input_ids"]}, features)
    assert cost["stacks"] == 4 and cost["all_additions_ms"] > 0


def test_decode_rate_times_the_decode_steps_inside_one_generate_call(images):
    from tests.fixtures import tiny

    model, processor = tiny("llm")
    inputs = processor(images=images[:1], text="<image>\nq")
    text = {k: v for k, v in inputs.items() if k != "pixel_values"}
    bench = object.__new__(Bench)
    bench.repeats, bench.device = 2, torch.device("cpu")
    with torch.inference_mode():
        features = model.get_image_features(inputs["pixel_values"])
        clock = TokenClock(bench.device)
        model.generate(**text, mm_encoder_outputs={"image": features}, max_new_tokens=5, min_new_tokens=5,
                       do_sample=False, streamer=clock)
        rate = bench._decode_rate(model, text, features, new_tokens=4)
    assert len(clock.times) == 1 + 5  # the prompt, then each new token
    assert clock.decode_rate() == pytest.approx(4 / (clock.times[-1] - clock.times[1]))  # 4 steps after the 1st
    assert 0 < rate["min"] <= rate["median"] <= rate["max"] and rate["new_tokens"] == 4
    clock.times = clock.times[:2]
    with pytest.raises(ValueError, match="at least two new tokens"):
        clock.decode_rate()
