"""The bench's report: bench.md (per-mode costs, the targets, the hires_scale sweep) and bench.png."""

from __future__ import annotations

from pathlib import Path

from ...utils.plots import saved_figure
from ...utils.tables import markdown_table

NOTES = [
    "Runs: a call over 20 s (the string modes' batch of 8 on a CPU) keeps its first run and stops after 90 s, fewer "
    "than the usual runs, as marked. Peak memory is profiled for up to 1000 tokens a row on a CPU (the profiler "
    "slows longer calls many times over). Decode tok/s: the 64 decode steps after the prefill, timed token by "
    "token inside one generate call (KV cache, greedy).",
    "",
    "torch's FLOP counter does not count the CPU attention kernel, so on a CPU its number is compared with the "
    "formula without the attention products; the full formula adds them.",
]


def _ratio(rows, mode, key, base="none"):
    """``mode``'s value of ``key`` over ``base``'s (medians of timings), nan when either lacks it."""
    by = {r["mode"]: r for r in rows}
    if mode not in by or base not in by or key not in by[mode] or key not in by[base]:
        return float("nan")
    value, reference = by[mode][key], by[base][key]
    if isinstance(value, dict):
        value, reference = value.get("median_ms", value.get("median")), reference.get("median_ms", reference.get("median"))
    return value / reference


def _timing(timing: dict, repeats: int) -> str:
    """``median [min-max]`` in ms, with the number of runs when fewer than asked counted."""
    runs = "" if timing.get("runs", repeats) >= repeats else f", {timing['runs']} run(s)"
    return f"{timing['median_ms']:.1f} [{timing['min_ms']:.1f}-{timing['max_ms']:.1f}{runs}]"


def _megabytes(row: dict, key: str) -> str:
    return f"{row[key]:.0f}" if key in row else "not profiled"


def _mode_cells(row: dict, repeats: int) -> list:
    return [
        row["mode"], row["llm_image_tokens"], row["sequence_length_b1"], _timing(row["llm_prefill_b1"], repeats),
        _timing(row["llm_prefill_b8"], repeats), _megabytes(row, "llm_prefill_peak_mb_b1"),
        _timing(row["vision_b1"], repeats), f"{row['decode_tokens_per_s']['median']:.1f}",
        _timing(row["train_step_b1"], repeats) if "train_step_b1" in row else "-",
        _megabytes(row, "train_step_peak_mb_b1"),
        f"{row['llm_prefill_gflops_counted']:.1f} / {row['llm_prefill_gflops_formula_no_attention']:.1f} / "
        f"{row['llm_prefill_gflops_formula']:.1f}",
    ]


def _modes(results: dict) -> str:
    header = ["mode", "image tokens in LLM", "seq len", "LLM prefill b1 ms", "LLM prefill b8 ms", "prefill peak MB b1",
              "vision ms", "decode tok/s", "train step ms", "train peak MB",
              "LLM GFLOPs: counted / formula without attention / formula"]
    return markdown_table(header, [_mode_cells(row, results["repeats"]) for row in results["modes"]])


def _checks(results: dict) -> list[tuple[str, float, object]]:
    """(target, measured value, test) for each target: ratios from the paired rounds where there are some."""
    rows, paired = results["modes"], results.get("paired", {})
    checks = [
        ("llm prefill time <= 1.03 x none (b1, paired rounds, median ratio)",
         paired.get("prefill_ratio_b1", {}).get("median", _ratio(rows, "llm", "llm_prefill_b1")), lambda v: v <= 1.03),
        ("llm prefill time <= 1.03 x none (b8, paired rounds, median ratio)",
         paired.get("prefill_ratio_b8", {}).get("median", _ratio(rows, "llm", "llm_prefill_b8")), lambda v: v <= 1.03),
        ("llm prefill peak memory <= 1.05 x none (b1)", _ratio(rows, "llm", "llm_prefill_peak_mb_b1"), lambda v: v <= 1.05),
        ("llm prefill peak memory <= 1.05 x none (b8)", _ratio(rows, "llm", "llm_prefill_peak_mb_b8"), lambda v: v <= 1.05),
        ("llm decode tokens/s within 3% of none (paired rounds, median ratio)",
         paired.get("decode_rate_ratio", {}).get("median", _ratio(rows, "llm", "decode_tokens_per_s")),
         lambda v: abs(v - 1) <= 0.03),
        ("global_hires_string prefill >= 4 x llm (b1)",
         _ratio(rows, "global_hires_string", "llm_prefill_b1", base="llm"), lambda v: v >= 4),
    ]
    llm = next((r for r in rows if r["mode"] == "llm"), None)
    if llm and "injection" in llm:
        share = llm["injection"]["all_additions_ms"] / llm["llm_prefill_b1"]["median_ms"]
        checks.append(("all stack additions <= 1% of LLM prefill (b1)", share, lambda v: v <= 0.01))
    return checks


def _targets(results: dict) -> str:
    rows = [(name, f"{value:.3f}", "yes" if ok(value) else "NO") for name, value, ok in _checks(results)]
    return markdown_table(["target", "measured", "met"], rows)


def _scaling(results: dict) -> str:
    """The sweep, each prefill also as a multiple of llm's at the same hires_scale."""
    scaling = results["scaling"]
    llm_time = {r["hires_scale"]: r["llm_prefill"]["median_ms"] for r in scaling if r["mode"] == "llm"}
    rows = [[r["mode"], r["hires_scale"], r["stacks"], r["sequence_length"],
             _timing(r["llm_prefill"], results["repeats"]), f"{r['llm_prefill_gflops_formula']:.1f}",
             f"{r['llm_prefill']['median_ms'] / llm_time[r['hires_scale']]:.2f}"]
            for r in scaling]
    header = ["mode", "hires_scale", "stacks", "seq len", "prefill ms", "GFLOPs (formula)", "x llm at same scale"]
    return markdown_table(header, rows)


def report(results: dict) -> str:
    """bench.md: where it ran, each mode's costs, the targets checked, and the hires_scale sweep."""
    lines = [
        "# deepstack bench",
        "",
        f"Device: {results['device']} ({results['threads']} threads), torch {results['torch']}; {results['vision']}; "
        f"{results['llm']}; medians of {results['repeats']} runs after a warm-up (min-max in brackets).",
        "",
        _modes(results),
        "",
        *NOTES,
        "",
        "## Targets (ratios from this run)",
        "",
        _targets(results),
    ]
    if results.get("scaling"):
        lines += ["", "## Scaling with hires_scale (LLM prefill, batch 1)", "", _scaling(results)]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Left: prefill and vision time per mode; right: LLM prefill against the number of stacks, log scale."""
    with saved_figure(path, figsize=(11, 4), dpi=110) as figure:
        left, right = figure.subplots(1, 2)
        rows = results["modes"]
        names = [r["mode"] for r in rows]
        prefill = [r["llm_prefill_b1"]["median_ms"] for r in rows]
        left.bar(names, prefill, label="LLM prefill")
        left.bar(names, [r["vision_b1"]["median_ms"] for r in rows], bottom=prefill, label="vision side")
        left.set_ylabel("ms, batch 1")
        left.set_title("prefill cost per mode (hires_scale 2)")
        left.tick_params(axis="x", rotation=30)
        left.legend()
        for mode in sorted({r["mode"] for r in results.get("scaling", [])}):
            points = [r for r in results["scaling"] if r["mode"] == mode]
            right.plot([p["stacks"] for p in points], [p["llm_prefill"]["median_ms"] for p in points], marker="o",
                       label=mode)
        right.set_xlabel("stacks S = hires_scale^2")
        right.set_ylabel("LLM prefill ms")
        right.set_yscale("log")
        right.set_title("LLM prefill as the hi-res view grows")
        right.legend()
