"""What a person looks at after training: the loss curve as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.plots import saved_figure


def plot_loss(metrics_path: Path, out: Path) -> None:
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not rows:
        return
    with saved_figure(out, figsize=(6, 3.5), dpi=120) as figure:
        axis = figure.add_subplot()
        axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.5)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("loss (mean over answer tokens)")
        axis.set_title(f"training loss, final {rows[-1]['loss']:.4f}")
        axis.grid(alpha=0.3)
