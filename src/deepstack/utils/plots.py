"""Figures written to files: matplotlib without a screen, closed once saved."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def saved_figure(path: str | Path, **figure_kwargs) -> Iterator:
    """A new figure that is laid out, written to ``path`` and closed when the block ends."""
    plt = pyplot()
    figure = plt.figure(**figure_kwargs)
    try:
        yield figure
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
