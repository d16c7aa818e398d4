"""Where and in which precision to run: one answer for inference, training and benchmarks."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the machine's accelerator (CUDA, MPS, ...) when it has one, else the CPU."""
    if name == "auto":
        accelerator = torch.accelerator.current_accelerator()
        return accelerator if accelerator is not None else torch.device("cpu")
    return torch.device(name)


def bf16_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def pick_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a GPU that has it, else ``None`` (keep the checkpoint's dtype); or a name of DTYPES."""
    if name == "auto":
        return torch.bfloat16 if bf16_available(device) else None
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
