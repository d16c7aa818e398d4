"""Reading and writing checkpoint folders one tensor at a time (docs/convert.md, "How the weights move").

A converter never holds a whole state dict: it reads the source's key names and shapes from the file
headers, decides where every key goes, and then reads each tensor when its output shard is written, so at
most one output shard is in memory. Safetensors files are read with ``safe_open``; pickle files (``*.bin``,
``*.pt``) only when the caller allows it, and then with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

DEFAULT_MAX_SHARD_SIZE = "5GB"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# files a training run leaves beside its weights
NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"}
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class ConversionError(ValueError):
    """A checkpoint or a setting the converter cannot carry over; the message says what and what to do."""


def parse_size(size: int | str) -> int:
    """Bytes from ``5GB``, ``500MB``, ``2GiB`` or an int."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMG]i?B|B)\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise ConversionError(f"max_shard_size={size!r}: give bytes as an int or a size like '500MB' or '5GB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


# ---- reading --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class CheckpointReader:
    """The tensors of a checkpoint folder, by name, read lazily. Use as a context manager.

    Looks for, in order: ``model.safetensors.index.json`` (shards), ``model.safetensors``, other
    ``*.safetensors`` files, then the pickle formats (``pytorch_model.bin.index.json``, ``*.bin``, ``*.pt``),
    which are refused unless ``allow_pickle``.
    """

    def __init__(self, folder: str | Path, allow_pickle: bool = False):
        self.folder = Path(folder)
        self.allow_pickle = allow_pickle
        self.files = self._weight_files()
        self._stack = ExitStack()
        self._handles: dict[Path, object] = {}
        self.tensors: dict[str, TensorInfo] = {}

    def __enter__(self) -> CheckpointReader:
        for file in self.files:
            handle = self._open(file)
            for name in handle.keys():
                if name in self.tensors:
                    raise ConversionError(
                        f"{self.folder}: tensor {name!r} is in both {self.tensors[name].file.name} and {file.name}"
                    )
                self.tensors[name] = self._info(file, handle, name)
        return self

    def __exit__(self, *exc) -> None:
        self._handles.clear()
        self._stack.close()

    def keys(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        tensor = self._handles[info.file].get_tensor(name)
        return tensor if info.file.suffix == ".safetensors" else tensor.clone()  # no storage shared with a tie

    # ---- the files -------------------------------------------------------------------------------------
    def _weight_files(self) -> list[Path]:
        folder = self.folder
        if not folder.is_dir():
            raise ConversionError(f"{folder}: no such checkpoint folder")
        if (folder / SAFETENSORS_INDEX).is_file():
            return self._indexed(folder / SAFETENSORS_INDEX)
        if (folder / "model.safetensors").is_file():
            return [folder / "model.safetensors"]
        if safetensors := sorted(folder.glob("*.safetensors")):
            return safetensors
        if (folder / PICKLE_INDEX).is_file():
            pickles = self._indexed(folder / PICKLE_INDEX)
        elif (folder / "pytorch_model.bin").is_file():
            pickles = [folder / "pytorch_model.bin"]
        else:
            found = sorted([*folder.glob("*.bin"), *folder.glob("*.pt")])
            pickles = [file for file in found if file.name not in NOT_WEIGHTS]
        if not pickles:
            raise ConversionError(f"{folder}: no weights found (no *.safetensors, *.bin or *.pt file)")
        if not self.allow_pickle:
            raise ConversionError(
                f"{pickles[0]}: a pickle checkpoint; unpickling a file from elsewhere can run code on this machine. "
                "Pass allow_pickle=True (--allow-pickle) to read it with torch.load(weights_only=True), or convert "
                "it to safetensors first"
            )
        return pickles

    def _indexed(self, index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ConversionError(f"{index}: not a checkpoint index (no readable 'weight_map': {error})") from None
        files = [index.parent / name for name in dict.fromkeys(weight_map.values())]
        missing = [file.name for file in files if not file.is_file()]
        if missing:
            raise ConversionError(f"{index}: names shard(s) that are not in the folder: {', '.join(missing)}")
        return files

    def _open(self, file: Path):
        if file.suffix == ".safetensors":
            handle = self._stack.enter_context(safe_open(str(file), framework="pt"))
        else:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as error:  # noqa: BLE001 - any unpickling failure is reported the same way
                raise ConversionError(f"{file}: torch.load(weights_only=True) refused it ({error})") from None
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ConversionError(f"{file}: not a state dict of tensors")
            handle = _DictHandle(state)
        self._handles[file] = handle
        return handle

    @staticmethod
    def _info(file: Path, handle, name: str) -> TensorInfo:
        if isinstance(handle, _DictHandle):
            tensor = handle.state[name]
            return TensorInfo(file, tuple(tensor.shape), tensor.dtype)
        piece = handle.get_slice(name)
        dtype = piece.get_dtype()
        if dtype not in _SAFETENSORS_DTYPES:
            raise ConversionError(f"{file}: tensor {name!r} has dtype {dtype}, which the converter does not handle")
        return TensorInfo(file, tuple(piece.get_shape()), _SAFETENSORS_DTYPES[dtype])


class _DictHandle:
    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def keys(self):
        return self.state.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        return self.state[name]


# ---- mapping --------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One output tensor: its name, how to read it, and its shape and dtype (known before reading)."""

    name: str
    read: Callable[[], torch.Tensor]
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def refuse_unmapped(source: Path, unknown: Iterable[str], what: str) -> None:
    """Stop, naming every source key that has no place in the target (at most 20 shown)."""
    unknown = sorted(unknown)
    if unknown:
        shown = ", ".join(unknown[:20]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 20 else "")
        raise ConversionError(
            f"{source}: {len(unknown)} tensor(s) have no place in {what}: {shown}. The checkpoint holds parts this "
            "converter does not understand; nothing was written"
        )


def refuse_missing(source: Path, missing: Iterable[str], what: str) -> None:
    missing = sorted(missing)
    if missing:
        shown = ", ".join(missing[:20]) + (f", ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise ConversionError(f"{source}: the checkpoint lacks {len(missing)} tensor(s) that {what} needs: {shown}")


# ---- writing --------------------------------------------------------------------------------------------
def write_safetensors(
    folder: Path, entries: list[Entry], max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
) -> list[Path]:
    """Write ``entries`` as ``model.safetensors``, or as ``model-0000i-of-0000n.safetensors`` shards with a
    ``model.safetensors.index.json`` when they exceed ``max_shard_size``. Shards are planned from the known
    sizes first; each is then read, written and released in turn."""
    limit = parse_size(max_shard_size)
    shards: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for name, shard in zip(names, shards):
        tensors = {entry.name: entry.read().contiguous() for entry in shard}
        for entry in shard:
            tensor = tensors[entry.name]
            if tuple(tensor.shape) != entry.shape or tensor.dtype != entry.dtype:
                raise ConversionError(
                    f"tensor {entry.name!r}: read {tuple(tensor.shape)} {tensor.dtype}, "
                    f"expected {entry.shape} {entry.dtype}"
                )
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(entry.nbytes for entry in entries)},
            "weight_map": {entry.name: name for name, shard in zip(names, shards) for entry in shard},
        }
        (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [folder / name for name in names]


def prepare_output(source: Path, out: Path) -> Path:
    """``out`` as a new or empty folder that is not the source."""
    out = Path(out)
    if out.resolve() == Path(source).resolve():
        raise ConversionError(f"{out}: the output folder is the source folder; choose a new one")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out}: exists and is not an empty folder; choose a new or empty one")
    out.mkdir(parents=True, exist_ok=True)
    return out


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder}: no config.json; give the folder of a saved checkpoint")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path}: not valid JSON ({error})") from None
