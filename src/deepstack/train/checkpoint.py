"""Checkpoints a run can be killed in the middle of and resumed from exactly.

``<output>/checkpoints/step-00000040/`` holds accelerate's state (model, optimizer, scheduler, RNGs), the
processor and ``trainer_state.json``; that last file is what marks a checkpoint complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"


def checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    folder = output_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir() if p.name.startswith("step-") and (p / STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("step-")))


def save_checkpoint(accelerator, processor, output_dir: Path, step: int, keep_last: int) -> None:
    """Written to a temporary folder and renamed into place: a kill at any moment leaves either the old
    set of checkpoints or the new one, never a half-written checkpoint that looks complete."""
    folder = output_dir / CHECKPOINTS
    final, temporary = folder / f"step-{step:08d}", folder / f".step-{step:08d}.tmp"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    if accelerator.is_main_process:
        processor.save_pretrained(temporary / "processor")
        (temporary / STATE).write_text(json.dumps({"step": step}))
        os.replace(temporary, final)
        for old in checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def resume_step(accelerator, output_dir: Path) -> int:
    """Load the newest complete checkpoint into ``accelerator``'s prepared objects; the step it was saved
    after, or 0 when the run has none (it then starts from the beginning)."""
    saved = checkpoints(output_dir)
    if not saved:
        return 0
    accelerator.load_state(str(saved[-1]))
    return json.loads((saved[-1] / STATE).read_text())["step"]


def remove_partial(output_dir: Path) -> None:
    """Temporary folders of saves that a kill interrupted."""
    for stale in (output_dir / CHECKPOINTS).glob(".step-*.tmp"):
        shutil.rmtree(stale)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the log lines of steps after ``step``: the resumed run writes them again."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
