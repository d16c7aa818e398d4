"""The lab's arms (a stack_mode and settings) and the groups that mirror the paper's tables and figures."""

from __future__ import annotations

from dataclasses import dataclass

from ...model.configuration import DeepStackConfig


@dataclass(frozen=True)
class Arm:
    label: str
    mode: str
    settings: tuple = ()  # (key, value) pairs of DeepStackConfig settings

    @property
    def key(self) -> str:
        """The model's identity: arms with the same mode and settings share their runs."""
        settings = dict(self.settings)
        changed = sorted(key for key in settings if settings[key] != getattr(DeepStackConfig, key))
        return self.mode + "".join(f"-{key}={settings[key]}" for key in changed)


def _arm(label: str, mode: str = "llm", **settings) -> Arm:
    return Arm(label, mode, tuple(sorted(settings.items())))


GROUPS: dict[str, tuple[str, list[Arm]]] = {
    "table7": (
        "Table 7 analogue: how the hi-res tokens reach the LLM",
        [_arm("none", "none"), _arm("dim_concat", "dim_concat"), _arm("hires_string", "hires_string"),
         _arm("global_hires_string", "global_hires_string"), _arm("llm (DeepStack-L)"), _arm("vit (DeepStack-V)", "vit")],
    ),
    "table6": ("Table 6 analogue: dummy stacks (the global tokens) vs hi-res stacks",
               [_arm("none", "none"), _arm("dummy", "dummy"), _arm("llm")]),
    "table5": (
        "Table 5 analogue: Sampling2D layout of the stacks",
        [_arm(name, stack_sampling=name) for name in ("2d_spatial", "2d_grid", "1d_sequential")],
    ),
    "fig3a": ("Fig. 3a analogue: first layer that receives a stack (8-layer LLM)",
              [_arm(f"start {layer}", stack_start_layer=layer) for layer in (0, 1, 2, 4)]),
    "fig3b": ("Fig. 3b analogue: interval between stacked layers",
              [_arm(f"interval {interval}", stack_interval=interval) for interval in (1, 2)]),
    "fig3c": ("Fig. 3c analogue: number of stacked layers (stacks injected)",
              [_arm(f"{count} layer(s)", num_stack_layers=count) for count in (1, 2, 3)] + [_arm("4 layers (all)")]),
}


def arms_of(groups: list[str]) -> dict[str, Arm]:
    """The distinct models of ``groups``, by key: an arm that appears in several groups is one model."""
    return {arm.key: arm for group in groups for arm in GROUPS[group][1]}
