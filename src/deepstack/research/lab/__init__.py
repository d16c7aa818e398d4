"""`deepstack lab`: the paper's ablations in miniature, on a synthetic task (research.tasks), one task at a time.

Every arm is a model trained from scratch with the demo's recipe (same data, budget and tiny parts), for
several seeds; the report gives mean ± std over the seeds and checks claims stated before the runs against them.
On the fine-detail task (``finedetail``, v3):

- ``table7``: how the hi-res tokens reach the LLM (none, dim_concat, hires_string, global_hires_string, llm, vit);
- ``table6``: dummy stacks (the global tokens stacked) vs real hi-res stacks;
- ``table5``: the Sampling2D layouts (2d_spatial, 2d_grid, 1d_sequential);
- ``fig3a`` / ``fig3b`` / ``fig3c``: start layer, interval and number of stacked layers.

On the local-detail task (``localdetail``, v4), whose answer needs the right quarter in each stack:
``v4_table5``, ``v4_fig3``, ``v4_ceiling``; and beyond the paper ``local_speed`` (stack settings, projector lr),
``gate``, ``levels`` (encoder-level stacks) and ``upgrade`` (a trained ``none`` model turned into ``llm``).

Arms that are the same model (``llm`` with default settings appears in most groups) are trained once. Each
finished run is appended to ``runs.jsonl`` at once, so an interrupted lab continues where it stopped.

``arms``: the arms, groups and claims; ``runner``: the runs (a process pool, resumed from ``runs.jsonl``);
``upgrade``: the none -> llm path; ``stats``: mean ± std, equal steps / equal time, the claims; ``report``:
lab.md, lab.png and the learning-curve figures; ``probes``: the trained models evaluated with one setting changed
(``scripts/lab_probes.py``).
"""

from .arms import CLAIMS, GROUPS, Arm, Claim, Group
from .report import plot, plot_curves, report
from .runner import lab, task_of
from .stats import claims, collect, equal_time, run_key, summarise, unseparated
from .upgrade import switch, upgrade_and_evaluate

__all__ = ["CLAIMS", "GROUPS", "Arm", "Claim", "Group", "claims", "collect", "equal_time", "lab", "plot",
           "plot_curves", "report", "run_key", "summarise", "switch", "task_of", "unseparated", "upgrade_and_evaluate"]
