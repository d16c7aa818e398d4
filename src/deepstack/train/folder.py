"""A run's output folder: writable, held by one run at a time, and never holding two runs mixed.

Every check here happens before the model is built, so a mistake costs seconds, not the minutes of loading a
model and validating data that would be lost at the first write. A folder that already holds a run is
refused unless the run is continued (``--resume``, with the same config but for the step budget) or
replaced (``--overwrite``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from .checkpoint import CHECKPOINTS, checkpoints, read_state
from .config import TrainConfig, config_to_dict

LOCK = ".run.lock"
HOLDER = ".run.lock.holder"  # the PID and host of the run holding the lock, for the message of the next one
RUN_CONFIG = "train_config.yaml"
METRICS = "metrics.jsonl"
RUN_FILES = (RUN_CONFIG, CHECKPOINTS, METRICS, "config.json", "model.safetensors", "summary.json")
RESUMABLE_CHANGES = ("optim.max_steps", "optim.epochs")  # the step budget: a run may be made longer or shorter
NOT_COMPARED = ("output.dir",)  # where the run is, not what it is: a run folder may be moved


class _Unset:
    def __repr__(self) -> str:
        return "(not set)"


UNSET = _Unset()  # a key one of the two configs does not have


@contextmanager
def claim_output(config: TrainConfig, accelerator, resume: bool, overwrite: bool) -> Iterator[None]:
    """The output folder, checked and locked for this run until the block ends. Only the main process
    locks it and looks at its contents; the others wait for it."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in output.dir and --overwrite deletes it; pass one of them")
    output_dir = Path(config.output.dir)
    check_writable(output_dir)
    lock = None
    if accelerator.is_main_process:
        lock = RunLock(output_dir)
        try:
            check_reuse(config, resume, overwrite)
            if overwrite:
                wipe(config)
        except BaseException:
            lock.release()
            raise
    accelerator.wait_for_everyone()
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def check_writable(output_dir: Path) -> None:
    """The folder, or the nearest existing folder it would be created in, is a folder this process can write."""
    existing = output_dir
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if existing == output_dir:
        problem = f"output.dir={output_dir} is"
    else:
        problem = f"output.dir={output_dir} cannot be created: {existing} is"
    if not existing.is_dir():
        raise ValueError(f"{problem} a file, not a folder; set output.dir to a folder (it is created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{problem} not writable (permissions, or a read-only file system); fix its permissions or set "
            "output.dir to a folder you can write"
        )


class RunLock:
    """An exclusive OS-level lock on the folder (released by the OS if the process dies, so a killed run
    leaves no stale lock), with the holder's PID and host written beside it for the message of a second run."""

    def __init__(self, output_dir: Path):
        output_dir.mkdir(parents=True, exist_ok=True)
        self.holder = output_dir / HOLDER
        self.lock = FileLock(str(output_dir / LOCK), timeout=0)
        try:
            self.lock.acquire()
        except Timeout:
            raise ValueError(
                f"output.dir={output_dir} is in use by another training run ({self.describe_holder()}); two runs in "
                "one folder would overwrite each other's checkpoints and logs. Wait for it to end or stop it, or "
                "set output.dir to another folder"
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.holder.write_text(json.dumps(holder) + "\n")

    def describe_holder(self) -> str:
        try:
            holder = json.loads(self.holder.read_text())
            return f"process {holder['pid']} on host {holder['host']}, since {holder['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return f"a process that left no details in {self.holder}"

    def release(self) -> None:
        if self.lock.is_locked:
            self.holder.unlink(missing_ok=True)  # before the lock: the next holder's file must survive
            self.lock.release()


def run_files(output_dir: Path) -> list[str]:
    """What in the folder shows that a run (or a saved model) is there already."""
    return [name for name in RUN_FILES if (output_dir / name).exists()]


def check_reuse(config: TrainConfig, resume: bool, overwrite: bool) -> None:
    """A folder holding a run is trained into only to continue that same run, or after it is deleted."""
    output_dir = Path(config.output.dir)
    found = run_files(output_dir)
    if not found or overwrite:
        return
    if not resume:
        raise ValueError(
            f"output.dir={output_dir} already holds a training run ({', '.join(found)}); training another run into "
            "it would mix the two. Pass --resume to continue that run, --overwrite to delete it and start over, "
            "or set output.dir to a new folder"
        )
    saved = checkpoints(output_dir)
    if saved:
        source, previous = saved[-1], read_state(saved[-1])["config"]
    elif (output_dir / RUN_CONFIG).is_file():  # stopped before its first checkpoint: resume starts it again
        source, previous = output_dir / RUN_CONFIG, yaml.safe_load((output_dir / RUN_CONFIG).read_text())
    else:
        raise ValueError(
            f"output.dir={output_dir} holds {', '.join(found)} but no checkpoint or {RUN_CONFIG} of a training run "
            "to resume; pass --overwrite to replace it, or set output.dir to a new folder"
        )
    current = json.loads(json.dumps(config_to_dict(config)))  # tuples as lists, as the saved config has them
    changed = [(key, old, new) for key, old, new in differences(previous, current) if key not in RESUMABLE_CHANGES]
    if changed:
        lines = "\n".join(f"  {key}: {old!r} -> {new!r}" for key, old, new in changed)
        raise ValueError(
            f"output.dir={output_dir}: --resume continues the run saved in {source}, and this config differs from "
            f"that run's in {len(changed)} setting(s) (saved -> now):\n{lines}\n"
            f"Only the step budget ({', '.join(RESUMABLE_CHANGES)}) may change on resume. Restore these settings "
            "to continue that run, or pass --overwrite instead of --resume to delete it and start a new one"
        )


def differences(previous: Any, current: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for each setting that differs between two config trees."""
    if path in NOT_COMPARED:
        return []
    if isinstance(previous, dict) and isinstance(current, dict):
        found = []
        for key in dict.fromkeys([*previous, *current]):
            name = f"{path}.{key}" if path else str(key)
            found += differences(previous.get(key, UNSET), current.get(key, UNSET), name)
        return found
    if isinstance(previous, list) and isinstance(current, list) and len(previous) == len(current):
        return [found for index, (old, new) in enumerate(zip(previous, current))
                for found in differences(old, new, f"{path}[{index}]")]
    return [] if previous == current else [(path, previous, current)]


def wipe(config: TrainConfig) -> None:
    """Delete everything in the output folder but the lock, after checking that nothing the run reads
    (its data, its starting model) or the current folder is in there."""
    output_dir = Path(config.output.dir).resolve()
    inputs = {"the current folder": Path.cwd()}
    if config.model.init_from:
        inputs["model.init_from"] = Path(config.model.init_from)
    for index, source in enumerate(config.data.sources):
        inputs[f"data.sources[{index}].path"] = Path(source.path)
        inputs[f"data.sources[{index}].image_folder"] = Path(source.image_folder)
    for name, path in inputs.items():
        if path.resolve().is_relative_to(output_dir):
            raise ValueError(
                f"--overwrite would delete everything in output.dir={config.output.dir}, and {name} ({path}) is "
                "in it; move it out, or set output.dir to another folder"
            )
    for entry in output_dir.iterdir():
        if entry.name in (LOCK, HOLDER):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
