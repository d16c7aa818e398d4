"""What a lab training step costs under the precision, attention-kernel and compile options torch offers on this CPU.

    .venv/bin/python scripts/step_options.py --out docs/lab/step_options.md

Builds the lab's DeepStack-L model (the full recipe's tiny parts, from scratch) on a small local-detail dataset
and times the training loop's own step (``train.loop.train_step``: forward, backward, gradient clipping, AdamW
and the schedule) at one torch thread, as a lab worker runs,
under each option in turn, in paired rounds (every option once per round, the same batches), and writes the
median milliseconds per step and the ratio to eager fp32 with torch's default attention kernel. "compiled
layers" is a second copy of the model (the same initial weights) with ``compile_layers`` (``optim.compile``,
the lab's default); its first step, which compiles, is timed apart. A faster lab needs an option well below 1.0
here (docs/finedetail.md, "Where a run's time goes").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # an empty compile cache, as on a new machine

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from deepstack.model.builder import load_pretrained  # noqa: E402
from deepstack.research.recipe import FULL, initial_model, run_config  # noqa: E402
from deepstack.research.tasks import get_task  # noqa: E402
from deepstack.train.data import Collator  # noqa: E402
from deepstack.train.loop import setup_data, setup_optimizer, train_step  # noqa: E402

BASE = "fp32, eager"
OPTIONS = {  # name: (compiled copy of the model, context)
    BASE: (False, contextlib.nullcontext),
    "bf16 autocast": (False, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    "fp32, SDPA math kernel": (False, lambda: sdpa_kernel(SDPBackend.MATH)),
    "fp32, compiled layers (the lab's)": (True, contextlib.nullcontext),
}


def lab_step(work: Path, count: int, compiled: bool = False):
    """The lab's llm model (untrained; its layers compiled when ``compiled``), its optimizer and schedule, and
    ``count`` training batches of the full recipe's size: what one training step of a lab run takes, ready for
    ``train_step``."""
    recipe = FULL.with_task("localdetail")
    data = work / "data"
    get_task("localdetail").make_data(data, seed=0, sizes={"train": recipe.batch_size * count, "val": 2, "test": 2})
    init = initial_model("llm", data, work, 0, recipe)
    model, processor = load_pretrained(init)
    if compiled:
        model.compile_layers()
    config = run_config(init, data, work / "run", 0, recipe)
    accelerator = Accelerator(cpu=True)
    dataset, _ = setup_data(config, processor, accelerator)
    optimizer, scheduler = setup_optimizer(model, config.optim, recipe.steps)
    collate = Collator(processor.tokenizer.pad_token_id or 0)
    size = recipe.batch_size
    batches = [collate([dataset[i] for i in range(b * size, (b + 1) * size)]) for b in range(count)]
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]

    def step(batch):
        train_step(accelerator, model, optimizer, scheduler, [batch], trainable, config.optim.max_grad_norm)

    model.train()
    return step, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/lab/step_options.md")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per option and round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {}
    for compiled in (False, True):
        with tempfile.TemporaryDirectory() as work:
            models[compiled] = lab_step(Path(work), args.steps, compiled)
    steps = models[False][1]
    times: dict[str, list[float]] = {name: [] for name in OPTIONS}
    for name, (compiled, option) in OPTIONS.items():  # warm-up: each option's kernels once
        started = time.perf_counter()
        with option():
            models[compiled][0](steps[0])
        if compiled:
            compile_seconds = time.perf_counter() - started
    for _ in range(args.rounds):
        for name, (compiled, option) in OPTIONS.items():
            step = models[compiled][0]
            with option():
                started = time.perf_counter()
                for batch in steps:
                    step(batch)
                times[name].append((time.perf_counter() - started) / len(steps) * 1000)
    base = statistics.median(times[BASE])
    command = ".venv/bin/python scripts/step_options.py " + shlex.join(sys.argv[1:])
    lines = ["# A lab training step under torch's CPU options", "", f"Command: `{command.strip()}`  ",
             f"{args.rounds} paired rounds of {args.steps} steps (batch {FULL.batch_size}, the local-detail task's "
             "DeepStack-L of the full recipe), one torch thread. Median ms per step, and its ratio to eager fp32. "
             f"The compiled copy's first step (compiling its layers, empty compile cache) took "
             f"{compile_seconds:.0f} s.", "",
             "| option | ms per step | ratio | rounds (ms) |", "|---|---:|---:|---|"]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.0f} | {median / base:.2f} | {', '.join(f'{v:.0f}' for v in values)} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    record = {"command": command, "ms": times, "compile_seconds": compile_seconds}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
