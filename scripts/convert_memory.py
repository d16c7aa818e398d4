"""Peak memory of converting a ~1B-parameter LLaVA checkpoint (docs/convert_memory.md).

    .venv/bin/python scripts/convert_memory.py --out docs/convert_memory.md
    .venv/bin/python scripts/convert_memory.py --layers 18 --max-shard-size 5GB --max-shard-size 500MB

Writes a synthetic transformers ``LlavaForConditionalGeneration`` checkpoint in bf16 (a Llama text model,
hidden 2048 and vocab 32000, plus a small CLIP tower; random weights) into a temporary folder under /tmp,
shard by shard (~500 MB each, so writing it never holds it all), under the names transformers'
``save_pretrained`` uses (checked against a tiny model saved by transformers). Then, for each
``--max-shard-size``, runs ``convert_llava_hf(src, out, stack_mode="llm", max_shard_size=...)`` in a child
process and takes that child's peak resident memory from ``os.wait4`` (``ru_maxrss``), comparing it with the
checkpoint's bytes on disk. Prints a Markdown report and writes it to ``--out``; deletes the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import AddedToken
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from deepstack.model.parts import default_image_processor
from deepstack.model.tiny import CHAT_TEMPLATE, tiny_text_config, tiny_tokenizer, tiny_vision_config

GiB = 2**30
CHILD = """
import json, resource, sys, threading, time
peaks = {"RssAnon": 0, "RssFile": 0}
def sample():  # the largest anonymous (heap) and file-backed (mmap) resident memory, every 20 ms
    while True:
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in peaks:
                peaks[key] = max(peaks[key], int(value.split()[0]) * 1024)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
from deepstack.convert import convert_llava_hf
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t1 = time.perf_counter()
convert_llava_hf(sys.argv[1], sys.argv[2], stack_mode="llm", max_shard_size=sys.argv[3])
t2 = time.perf_counter()
print(json.dumps({"import_peak": imported, "import_s": t1 - t0, "convert_s": t2 - t1, **peaks}))
"""


def saved_name(name: str) -> str:
    """transformers 5's in-memory LLaVA name -> the name ``save_pretrained`` writes."""
    for old, new in (
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
    ):
        if name.startswith(old):
            return new + name.removeprefix(old)
    raise ValueError(name)


def check_saved_names(folder: Path) -> None:
    """Save a tiny LLaVA with transformers and check ``saved_name`` gives exactly the names it wrote."""
    config = LlavaConfig(
        vision_config=tiny_vision_config(num_layers=1).to_dict(),
        text_config=tiny_text_config(num_layers=1).to_dict(),
        tie_word_embeddings=False,
        image_token_index=5,
    )
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        written = set(handle.keys())
    ours = {saved_name(name) for name in model.state_dict()}
    if ours != written:
        raise SystemExit(f"save_pretrained's names differ from ours: {sorted(ours ^ written)[:10]}")


def llava_config(layers: int, tokenizer) -> LlavaConfig:
    vision = CLIPVisionConfig(
        image_size=224, patch_size=14, hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
        num_attention_heads=8,
    )
    text = LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
        num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), tie_word_embeddings=False,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=(224 // 14) ** 2,
        vision_feature_layer=-2,
    )
    config.dtype = "bfloat16"
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def write_checkpoint(folder: Path, layers: int, shard_bytes: int) -> int:
    """The synthetic checkpoint, shard by shard; returns its parameter count."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    config = llava_config(layers, tokenizer)
    with torch.device("meta"):
        shapes = {saved_name(n): tuple(t.shape) for n, t in LlavaForConditionalGeneration(config).state_dict().items()}
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map = {}
    generator = torch.Generator().manual_seed(0)
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {
            name: torch.empty(shapes[name], dtype=torch.bfloat16).normal_(0, 0.02, generator=generator)
            for name in names
        }
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(names, file))
    total = sum(math.prod(shape) for shape in shapes.values())
    index = {"metadata": {"total_size": total * 2}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(folder)
    processor = LlavaProcessor(
        default_image_processor(config.vision_config), tokenizer, patch_size=14,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1,
    )
    processor.save_pretrained(folder)
    return total


def folder_bytes(folder: Path, pattern: str = "*.safetensors") -> int:
    return sum(file.stat().st_size for file in folder.glob(pattern))


def convert_in_child(src: Path, out: Path, max_shard_size: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(src), str(out), max_shard_size], stdout=subprocess.PIPE, env=env
    )
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"conversion failed (exit {child.returncode})")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    return result | {"peak": usage.ru_maxrss * 1024, "wall_s": wall, "out_bytes": folder_bytes(out)}


def machine() -> str:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"{os.cpu_count()} cores, {ram / GiB:.1f} GiB RAM, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    parser.add_argument("--layers", type=int, default=18, help="Llama layers (18: ~1.06B parameters)")
    parser.add_argument("--source-shard", default=500 * 10**6, type=int, help="source shard size in bytes")
    parser.add_argument(
        "--max-shard-size", action="append", help="the converter's max_shard_size (repeatable; default 5GB, 500MB)"
    )
    parser.add_argument("--tmp", default="/tmp", help="where the temporary checkpoints go")
    args = parser.parse_args()
    sizes = args.max_shard_size or ["5GB", "500MB"]
    command = "python scripts/convert_memory.py " + " ".join(sys.argv[1:])

    work = Path(tempfile.mkdtemp(prefix="convert_memory_", dir=args.tmp))
    try:
        check_saved_names(work / "tiny")
        start = time.perf_counter()
        src = work / "llava"
        src.mkdir()
        params = write_checkpoint(src, args.layers, args.source_shard)
        files = len(list(src.glob("*.safetensors")))
        write_s = time.perf_counter() - start
        ckpt = folder_bytes(src)
        print(f"wrote {params / 1e9:.3f}B parameters, {ckpt / 1e9:.3f} GB in {write_s:.1f} s", flush=True)
        runs = []
        for size in sizes:
            result = convert_in_child(src, out := work / f"out-{size}", size) | {"max_shard_size": size}
            runs.append(result)
            shutil.rmtree(out)
            print(f"max_shard_size={size}: peak RSS {result['peak'] / GiB:.2f} GiB "
                  f"({result['peak'] / ckpt:.2f}x), {result['wall_s']:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "# Memory of converting a ~1B-parameter LLaVA checkpoint",
        "",
        f"Made by `{command}` ([scripts/convert_memory.py](../scripts/convert_memory.py)).",
        "",
        f"- Source: a synthetic transformers `LlavaForConditionalGeneration` checkpoint in bf16 ({args.layers}-layer "
        "Llama, hidden 2048, vocab 32000, untied head; 4-layer CLIP tower, 512 wide), random weights, "
        f"{files} safetensors shards of ~{args.source_shard / 1e6:.0f} MB, written shard by shard in {write_s:.0f} s.",
        f"- Parameters: {params:,} ({params / 1e9:.3f}B)",
        f"- Checkpoint on disk (safetensors): {ckpt:,} bytes ({ckpt / GiB:.2f} GiB)",
        f"- Machine: {machine()}",
        "- Measured: `convert_llava_hf(src, out, stack_mode=\"llm\", max_shard_size=...)` in a fresh child "
        "process; peak RSS is the child's `ru_maxrss` (from `os.wait4`), wall time includes starting Python and "
        "importing deepstack.",
        "",
        "| max_shard_size | peak RSS | peak RSS / checkpoint | peak RSS after imports | peak − imports | sampled peak anon / file-backed RSS | wall time (convert only) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['max_shard_size']} | {run['peak']:,} B ({run['peak'] / GiB:.2f} GiB) | "
            f"**{run['peak'] / ckpt:.2f}x** | {run['import_peak'] / GiB:.2f} GiB | "
            f"{(run['peak'] - run['import_peak']) / GiB:.2f} GiB ({(run['peak'] - run['import_peak']) / ckpt:.2f}x) | "
            f"{run['RssAnon'] / GiB:.2f} / {run['RssFile'] / GiB:.2f} GiB | "
            f"{run['wall_s']:.1f} s ({run['convert_s']:.1f} s) |"
        )
    lines += [
        "",
        "\"peak − imports\" is what the conversion itself adds on top of the interpreter with torch, transformers and "
        "deepstack imported (the child's peak right after `from deepstack.convert import convert_llava_hf`). The "
        "converter holds one output shard of tensors (up to `max_shard_size`) while writing it; pages of the "
        "memory-mapped source shards it has read also count towards RSS until the kernel drops them. The anon / "
        "file-backed column samples `/proc/self/status` every 20 ms: anonymous memory is what the process itself "
        "allocated (tensors copied out of the files, the imports), file-backed memory is mapped pages of the "
        "safetensors files (page cache the kernel can reclaim under pressure, not a copy). On this run the anonymous peak stays near "
        "the interpreter's own whatever `max_shard_size` is, so the tensors are not copied: `safe_open` hands out "
        "tensors over the mapped file and `save_file` writes them out; the peak RSS is the mapped source (about "
        "its size, as every page is read once) plus torch's libraries, and equal for both shard sizes.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
