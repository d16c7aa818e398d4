"""Checkpoints a run can be killed in the middle of and resumed from exactly.

``<output>/checkpoints/step-00000040/`` holds accelerate's state (model weights as safetensors; optimizer and
RNG states, loaded with ``weights_only=True``), the processor and ``trainer_state.json``: the step, the
scheduler's state and the run's config, as JSON. That last file is what marks a checkpoint complete. Nothing
of a checkpoint is unpickled in a way that could run code: a checkpoint may come from someone else.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

from accelerate.utils import load as load_tensors

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"


def checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    folder = output_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir() if p.name.startswith("step-") and (p / STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("step-")))


def read_state(checkpoint: Path) -> dict:
    """A checkpoint's ``trainer_state.json``; refused when an older version wrote it (no config, pickled
    scheduler), since this version does not unpickle what that one saved."""
    state = json.loads((checkpoint / STATE).read_text())
    pickled = sorted(p.name for p in checkpoint.glob("custom_checkpoint_*.pkl"))
    if pickled or "config" not in state or "scheduler" not in state:
        found = f" (it holds {', '.join(pickled)}, a pickle)" if pickled else ""
        raise ValueError(
            f"{checkpoint}: not a checkpoint this version can resume{found}: the scheduler state and the config "
            "are read from trainer_state.json, and other pickles are not loaded since unpickling can run "
            "arbitrary code; start over with --overwrite, or resume with the deepstack version that wrote it"
        )
    return state


def save_checkpoint(accelerator, processor, scheduler, config: dict, output_dir: Path, step: int,
                    keep_last: int) -> None:
    """Written to a temporary folder and renamed into place: a kill at any moment leaves either the old
    set of checkpoints or the new one, never a half-written checkpoint that looks complete."""
    folder = output_dir / CHECKPOINTS
    final, temporary = folder / f"step-{step:08d}", folder / f".step-{step:08d}.tmp"
    if (final / STATE).is_file():  # a finished run resumed: this checkpoint already is its state
        return
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    if accelerator.is_main_process:
        processor.save_pretrained(temporary / "processor")
        state = {"step": step, "scheduler": scheduler.state_dict(), "config": config}
        (temporary / STATE).write_text(json.dumps(state))
        os.replace(temporary, final)
        for old in checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def resume_step(accelerator, scheduler, output_dir: Path) -> int:
    """Load the newest complete checkpoint into ``accelerator``'s prepared objects and ``scheduler``; the
    step it was saved after, or 0 when the run has none (it then starts from the beginning)."""
    saved = checkpoints(output_dir)
    if not saved:
        return 0
    checkpoint = saved[-1]
    state = read_state(checkpoint)
    rng = checkpoint / f"random_states_{accelerator.process_index}.pkl"
    try:
        if rng.is_file():  # accelerate logs and ignores a file it cannot load; a refused one must stop the run
            load_tensors(rng, weights_only=True)
        accelerator.load_state(str(checkpoint), load_kwargs={"weights_only": True})
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(
            f"{checkpoint}: a state file holds Python objects other than tensors and plain data ({reason}); it was "
            "not loaded, since unpickling it could run arbitrary code. If this checkpoint is not from a run you "
            "trust, delete it (the run then resumes from the one before) or start over with --overwrite"
        ) from None
    scheduler.load_state_dict(state["scheduler"])
    return state["step"]


def remove_partial(output_dir: Path) -> None:
    """Temporary folders of saves that a kill interrupted."""
    for stale in (output_dir / CHECKPOINTS).glob(".step-*.tmp"):
        shutil.rmtree(stale)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the log lines of steps after ``step``: the resumed run writes them again."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
