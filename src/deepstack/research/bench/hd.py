"""`deepstack bench --hd`: what DeepStack-HD costs at real shapes (docs/method.md, "DeepStack-HD").

The bench's towers (``RealShapes``: SmolLM2-135M and a CLIP ViT-L/14-336-shaped encoder, hires_scale 2) on
LLaVA-NeXT's any-resolution layout (``ANYRES_PINPOINTS``), one ``HD_IMAGE`` picture of 672x672 pixels (the base
image and 2x2 tiles) and the bench's 32-token prompt, batch 1. Written: every mode's image tokens and LLM context
length (from its processor), and for ``TIMED_MODES`` the LLM prefill alone, the LM head on the last position only.
The image features it takes are stand-ins of the exact shapes (``stand_in_features``: random rows for the
sequence and for each stack), passed as ``mm_encoder_outputs``: the prefill's dense work does not depend on their
values, and encoding the 25 crops of an HD image through a ViT-L on a 2-core CPU would cost minutes a mode; the
vision side is measured at 336 px by the main bench. The ratios come from paired rounds in ABBA order, as the
main bench's targets do: ``llm`` against ``none`` (``3 * rounds`` rounds after a warm-up round), then
``global_hires_string`` against ``llm`` (``rounds`` rounds; its prefill runs for tens of seconds on a CPU, so no
warm-up round).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from ...model.modeling import DeepStackImageOutput
from ...model.modes import STACK_MODES
from ...utils.device import pick_device
from ...utils.tables import markdown_table
from ...utils.timing import seconds
from .analytic import ANYRES_PINPOINTS, HD_IMAGE
from .measure import Bench, _alternate, _text
from .models import RealShapes
from .runner import _machine

COMMAND = "deepstack bench --hd --out docs/bench"
TIMED_MODES = ("none", "llm", "global_hires_string")
# (mode, base, the target on the median of the per-round ratios mode / base)
TARGETS = (("llm", "none", "<=", 1.03), ("global_hires_string", "llm", ">=", 4.0))


def run_hd(out: str | Path = "runs/bench", rounds: int = 2, threads: int | None = None, command: str = COMMAND) -> dict:
    """Measure DeepStack-HD's context lengths and paired LLM prefill times; hd.json (after each step) and hd.md
    in ``out``. ``threads``: torch's CPU threads (default: torch's choice)."""
    start, device, out = paired_setup(out, threads)
    models = RealShapes(device, image_grid_pinpoints=ANYRES_PINPOINTS)
    bench = Bench(models, device, repeats=1)
    height, width = HD_IMAGE
    results = {
        "command": command, **_machine(device), "cpus": os.cpu_count(), "load_at_start": os.getloadavg(),
        "vision": models.vision_name, "llm": models.llm_name, "image": [height, width],
        "pinpoints": ANYRES_PINPOINTS, "hires_scale": 2, "modes": [], "pairs": [],
    }
    for mode in STACK_MODES:  # context lengths: the processor alone
        processor = models.processor(mode)
        input_ids = bench.inputs(processor, 1, size=(width, height))["input_ids"]
        results["modes"].append({"mode": mode, "image_tokens": int((input_ids == processor.image_token_id).sum()),
                                 "sequence_length": input_ids.shape[1]})
    calls = {}
    with torch.inference_mode():
        for mode in TIMED_MODES:
            model, processor = bench.model(mode)
            inputs = bench.inputs(processor, 1, size=(width, height))
            calls[mode] = _prefill(model, _text(inputs), stand_in_features(model, height, width))
        for (mode, base, _, _), count, warmup in zip(TARGETS, (3 * rounds, rounds), (1, 0)):
            results["pairs"].append(_paired(calls, mode, base, count, warmup, device))
            _save(results, out)
    results["wall_s"] = time.perf_counter() - start
    _save(results, out)
    (out / "hd.md").write_text(report_hd(results))
    return results


def paired_setup(out: str | Path, threads: int | None) -> tuple[float, torch.device, Path]:
    """A paired-prefill bench's start: torch's CPU threads (``None``: its choice), the clock, the device and the
    output folder (made)."""
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return time.perf_counter(), pick_device("auto"), out


def stand_in_features(model, height: int, width: int) -> DeepStackImageOutput:
    """Image features of the shapes ``model`` makes for one ``height x width`` image: its image tokens' rows and,
    for the modes that add stacks to decoder layers, as many rows per stack; random, at the spread of the LLM's
    input embeddings."""
    config = model.config
    embeddings = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(0)
    shape = (config.num_image_tokens(height, width), config.text_config.hidden_size)

    def rows():
        return (torch.randn(shape, generator=generator) * embeddings.std()).to(embeddings.device, embeddings.dtype)

    injects = STACK_MODES[config.stack_mode].injects_into_llm
    stacks = [[rows()] for _ in range(config.num_llm_stacks)] if injects else None
    return DeepStackImageOutput(pooler_output=[rows()], deepstack_features=stacks)


def _prefill(model, text: dict, features):
    """The LLM prefill of pre-encoded image features, the LM head on the last position."""
    return lambda: model(**text, mm_encoder_outputs={"image": features}, logits_to_keep=1)


def _paired(calls: dict, mode: str, base: str, rounds: int, warmup: int, device) -> dict:
    """``mode``'s and ``base``'s prefill alternately (ABBA), one ratio ``mode / base`` per round."""
    times = {mode: [], base: []}
    for index in range(warmup + rounds):
        for arm in _alternate([base, mode], index):
            elapsed = seconds(calls[arm], device)
            if index >= warmup:
                times[arm].append(elapsed)
    ratios = [b / a for a, b in zip(times[base], times[mode])]
    return {"mode": mode, "base": base, "rounds": rounds, "warmup_rounds": warmup, "seconds": times,
            "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}}


def _save(results: dict, out: Path) -> None:
    (out / "hd.json").write_text(json.dumps(results, indent=2))


def report_head(title: str, results: dict) -> list[str]:
    """The first lines of a paired-prefill report: its title, the command and its time, the machine and the load."""
    load = ", ".join(f"{value:.1f}" for value in results["load_at_start"])
    return [
        f"# {title}",
        "",
        f"Command: `{results['command']}` ({results.get('wall_s', 0):.0f} s in all, model loading included).",
        "",
        f"Device: {results['device']}, torch {results['torch']} on {results['threads']} thread(s); "
        f"{results['cpus']} cores, load average {load} at the start. {results['vision']}; {results['llm']}.",
        "",
    ]


def ratio_cell(ratio: dict) -> str:
    """A paired ratio as a table cell: ``median [min-max]``."""
    return f"{ratio['median']:.3f} [{ratio['min']:.3f}-{ratio['max']:.3f}]"


def report_hd(results: dict) -> str:
    """hd.md: the command, the machine, every mode's context length, the timed prefills and the targets."""
    height, width = results["image"]
    runs = {}
    for pair in results["pairs"]:
        for mode, times in pair["seconds"].items():
            runs.setdefault(mode, []).extend(times)

    def prefill(mode):
        if mode not in runs:
            return "-"
        times = runs[mode]
        return f"{statistics.median(times):.2f} [{min(times):.2f}-{max(times):.2f}, {len(times)} runs]"

    rows = [[r["mode"], r["image_tokens"], r["sequence_length"], prefill(r["mode"])] for r in results["modes"]]
    checks = []
    for pair, (mode, base, sign, target) in zip(results["pairs"], TARGETS):
        ratio = pair["ratio"]
        met = ratio["median"] <= target if sign == "<=" else ratio["median"] >= target
        checks.append([f"{mode} / {base} LLM prefill {sign} {target:g} (median of {pair['rounds']} paired rounds)",
                       ratio_cell(ratio), "yes" if met else "NO"])
    lines = [
        *report_head("deepstack bench --hd", results),
        f"DeepStack-HD (docs/method.md, \"DeepStack-HD\"): LLaVA-NeXT's resolutions {results['pinpoints']}, one "
        f"{height}x{width} picture (the base image and 2x2 tiles of 336 px), hires_scale {results['hires_scale']}, "
        "the bench's 32-token prompt, batch 1. Image tokens and context length come from each mode's processor. "
        "Timed: the LLM prefill alone, in seconds, median [min-max] over the paired rounds a mode appears in; its "
        "image features are stand-ins of the exact shapes (random rows for the sequence and each stack, passed as "
        "`mm_encoder_outputs`; the prefill's dense work does not depend on their values), and the vision side is "
        "not timed here (bench.md times it at 336 px). LM head on the last position. Ratios: one per round, the two "
        "modes alternating in ABBA order so that drift in the machine's speed falls on both.",
        "",
        markdown_table(["mode", "image tokens", "LLM context", "LLM prefill s"], rows),
        "",
        "## Targets (ratios from this run)",
        "",
        markdown_table(["target", "measured median [min-max]", "met"], checks),
    ]
    return "\n".join(lines) + "\n"
