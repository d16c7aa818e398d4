"""Running the bench: every mode, the paired none/llm rounds and the hires_scale sweep, with bench.json
written after each step so that a cut-off bench keeps what it measured."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from ...utils.device import pick_device
from .measure import Bench
from .models import RealShapes
from .report import plot, report

MODES = ("none", "llm", "vit", "dim_concat", "hires_string", "global_hires_string")
SWEEP_MODES = ("none", "llm", "global_hires_string", "hires_string")


def run(out: str | Path = "runs/bench", repeats: int = 5, scales=(1, 2, 3, 4), modes=MODES,
        quick: bool = False) -> dict:
    """Measure every mode at real shapes on this machine's accelerator (or CPU); bench.json, bench.md and
    bench.png in ``out``. ``quick``: no training step."""
    from tqdm.auto import tqdm

    device = pick_device("auto")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = RealShapes(device)
    bench = Bench(models, device, repeats)
    results = {**_machine(device), "repeats": repeats, "vision": models.vision_name, "llm": models.llm_name,
               "modes": [], "scaling": []}
    for mode in tqdm(modes, desc="modes"):
        results["modes"].append(bench.measure_mode(mode, training_step=not quick, decode=True))
        _save(results, out)
    if {"none", "llm"} <= set(modes):
        results["paired"] = bench.paired(rounds=3 * repeats)
        _save(results, out)
    sweep = [(mode, scale) for scale in scales for mode in SWEEP_MODES]
    for mode, scale in tqdm(sweep, desc="scaling"):
        results["scaling"].append(bench.scaling(mode, scale))
        _save(results, out)
    (out / "bench.md").write_text(report(results))
    plot(results, out / "bench.png")
    return results


def _machine(device: torch.device) -> dict:
    """Where the bench ran: the GPU's name, or the CPU's (or the accelerator's type), and torch's threads."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = platform.processor() or "cpu"
    else:
        name = device.type
    return {"device": name, "threads": torch.get_num_threads(), "torch": torch.__version__}


def _save(results: dict, out: Path) -> None:
    (out / "bench.json").write_text(json.dumps(results, indent=2))
