"""`deepstack bench --settings`: what the lab's stack settings (docs/settings.md, "Stack settings") cost the LLM.

For each arm of the lab's ``local_speed`` and ``gate`` groups that changes the model (not only its training), the
LLM prefill of ``llm`` with that arm's settings against ``none`` at the bench's real shapes (``RealShapes``:
SmolLM2-135M, a CLIP ViT-L/14-336-shaped encoder, 576 image tokens, hires_scale 2, the bench's 32-token prompt,
batch 1): paired rounds in ABBA order after a warm-up round, one ratio per round, the median against the target
of ``llm`` itself (<= 1.03 x ``none``). The image features are stand-ins of the exact shapes
(``hd.stand_in_features``), as in ``--hd``: the settings act on the stacks inside the LLM (a norm, a scale, a
position embedding, a gate, where they are added), while the vision side's work is the same for every arm (each
stack row goes through one projector, shared or its own).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ...utils.tables import markdown_table
from ..lab.arms import GROUPS
from .hd import _paired, _prefill, paired_setup, ratio_cell, report_head, stand_in_features
from .measure import Bench, _text
from .models import RealShapes
from .runner import _machine

COMMAND = "deepstack bench --settings --out docs/bench"
TARGET = 1.03  # the main bench's target for llm / none, kept by every setting
GROUPS_TIMED = ("local_speed", "gate")


def variants() -> dict[str, dict]:
    """label -> settings: ``llm`` itself, then every arm of ``GROUPS_TIMED`` whose settings change the model."""
    found = {"llm": {}}
    for group in GROUPS_TIMED:
        for arm in GROUPS[group].arms:
            if arm.mode == "llm" and arm.settings and arm.upgrade_at is None and not arm.recipe:
                found.setdefault(arm.label, dict(arm.settings))
    return found


def run_settings(out: str | Path = "runs/bench", rounds: int = 6, threads: int | None = None,
                 command: str = COMMAND) -> dict:
    """Paired LLM prefill ratios of each setting's ``llm`` to ``none``; settings.json (after each arm) and
    settings.md in ``out``."""
    start, device, out = paired_setup(out, threads)
    models = RealShapes(device)
    bench = Bench(models, device, repeats=1)
    results = {"command": command, **_machine(device), "cpus": os.cpu_count(), "load_at_start": os.getloadavg(),
               "vision": models.vision_name, "llm": models.llm_name, "rounds": rounds, "pairs": []}
    height = width = models.vision_config.image_size
    with torch.inference_mode():
        model, processor = models("none")
        text = _text(bench.inputs(processor, 1))
        calls = {"none": _prefill(model, text, stand_in_features(model, height, width))}
        for label, settings in variants().items():
            model, processor = models("llm", **settings)
            calls[label] = _prefill(model, _text(bench.inputs(processor, 1)), stand_in_features(model, height, width))
            pair = _paired(calls, label, "none", rounds, 1, device)
            results["pairs"].append({**pair, "settings": settings})
            del calls[label]
            (out / "settings.json").write_text(json.dumps(results, indent=2))
    results["wall_s"] = time.perf_counter() - start
    (out / "settings.json").write_text(json.dumps(results, indent=2))
    (out / "settings.md").write_text(report_settings(results))
    return results


def report_settings(results: dict) -> str:
    """settings.md: the command, the machine, and each setting's ratio to ``none`` against the target."""
    rows = []
    for pair in results["pairs"]:
        ratio = pair["ratio"]
        settings = ", ".join(f"{key}={value}" for key, value in pair["settings"].items()) or "(defaults)"
        rows.append([pair["mode"], settings, ratio_cell(ratio), "yes" if ratio["median"] <= TARGET else "NO"])
    lines = [
        *report_head("deepstack bench --settings", results),
        "The LLM prefill of `llm` with each stack setting of the lab's `local_speed` and `gate` groups against "
        "`none` (576 image tokens, hires_scale 2: 4 stacks, the bench's 32-token prompt, batch 1; image features "
        "are stand-ins of the exact shapes, LM head on the last position), paired rounds in ABBA order after a "
        f"warm-up round ({results['rounds']} rounds an arm); the ratio is the median of the rounds' ratios "
        f"[min-max]. Target: at most {TARGET} x `none`, as for `llm` itself.",
        "",
        markdown_table(["arm", "settings", "LLM prefill / none", f"<= {TARGET}"], rows),
    ]
    return "\n".join(lines) + "\n"
