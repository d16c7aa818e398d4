"""`deepstack lab`: the paper's ablations in miniature, on the fine-detail task.

Every arm is a model trained from scratch with the demo's recipe (same data, budget and tiny parts), for
several seeds; the report gives mean ± std over the seeds and checks the paper's claims against them:

- ``table7``: how the hi-res tokens reach the LLM (none, dim_concat, hires_string, global_hires_string, llm, vit);
- ``table6``: dummy stacks (the global tokens stacked) vs real hi-res stacks;
- ``table5``: the Sampling2D layouts (2d_spatial, 2d_grid, 1d_sequential);
- ``fig3a`` / ``fig3b`` / ``fig3c``: start layer, interval and number of stacked layers.

Arms that are the same model (``llm`` with default settings appears in most groups) are trained once. Each
finished run is appended to ``runs.jsonl`` at once, so an interrupted lab continues where it stopped.

``arms``: the arms and their groups; ``runner``: the runs (a process pool, resumed from ``runs.jsonl``);
``stats``: mean ± std and the claims; ``report``: lab.md and lab.png.
"""

from .arms import GROUPS, Arm
from .report import plot, report
from .runner import lab
from .stats import claims, collect, summarise, unseparated

__all__ = ["GROUPS", "Arm", "claims", "collect", "lab", "plot", "report", "summarise", "unseparated"]
