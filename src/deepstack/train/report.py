"""What a person looks at after training: the loss curve as a PNG."""

from __future__ import annotations

import json
from pathlib import Path


def plot_loss(metrics_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=120)
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.5)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (mean over answer tokens)")
    axis.set_title(f"training loss, final {rows[-1]['loss']:.4f}")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
