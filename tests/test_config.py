"""Settings that cannot work fail when the config is made, naming the value and the reason."""

import pytest

from deepstack import DeepStackConfig
from deepstack.model.tiny import tiny_text_config, tiny_vision_config


def config(**settings):
    return DeepStackConfig(
        vision_config=tiny_vision_config().to_dict(), text_config=tiny_text_config().to_dict(), image_token_id=5, **settings
    )


def test_defaults_follow_the_paper():
    c = config()
    assert (c.stack_mode, c.stack_start_layer, c.stack_interval, c.hires_scale, c.stack_sampling) == (
        "llm", 1, 1, 2, "2d_spatial"
    )
    assert c.num_stacks == 4 and c.vision_feature_layer == -2 and c.num_global_tokens == 16


def test_unknown_mode():
    with pytest.raises(ValueError, match=r"stack_mode='deep': unknown mode; choose one of none, llm, vit"):
        config(stack_mode="deep")


def test_unknown_sampling():
    with pytest.raises(ValueError, match=r"stack_sampling='2d': unknown sampling"):
        config(stack_sampling="2d")


def test_stack_past_the_llm_depth():
    # 8 decoder layers: start 5 with 4 stacks needs layers 5..8
    with pytest.raises(ValueError, match=r"stack_start_layer=5: .* decoder layer 8, but the LLM has only 8 layers"):
        config(stack_start_layer=5)
    with pytest.raises(ValueError, match=r"stack_interval=3 .* decoder layer 10"):
        config(stack_interval=3)
    config(stack_start_layer=4)  # layers 4..7 fit
    config(stack_interval=2)  # layers 1, 3, 5, 7 fit
    config(stack_mode="none", stack_start_layer=30)  # irrelevant without injection


def test_bad_hires_scale_and_interval():
    with pytest.raises(ValueError, match=r"hires_scale=0"):
        config(hires_scale=0)
    with pytest.raises(ValueError, match=r"stack_interval=0"):
        config(stack_interval=0)


def test_patch_grid_must_divide():
    with pytest.raises(ValueError, match=r"image_size=30 is not a multiple of patch_size=8"):
        DeepStackConfig(
            vision_config=tiny_vision_config(image_size=30).to_dict(), text_config=tiny_text_config().to_dict()
        )


def test_vit_stack_layers_must_precede_the_feature_layer():
    # 6 encoder layers, feature layer -2 = output of layer 4: 4 stacks fit before layers 0..4 from start <= 1
    assert config(stack_mode="vit").vit_stack_start_layer == 1
    with pytest.raises(ValueError, match=r"vit_stack_start_layer=2: 4 stacks go before encoder layers 2..5"):
        config(stack_mode="vit", vit_stack_start_layer=2)


def test_num_stack_layers_counts_the_injected_stacks_only_for_injecting_modes():
    assert config().num_injected_stacks == 4
    c = config(num_stack_layers=2, stack_start_layer=6)  # layers 6, 7 fit with 2 stacks (4 would not)
    assert c.num_injected_stacks == 2 and c.num_stacks == 4
    with pytest.raises(ValueError, match=r"num_stack_layers=5: must be between 1 and the 4 stacks"):
        config(num_stack_layers=5)
    with pytest.raises(ValueError, match=r"num_stack_layers=0"):
        config(num_stack_layers=0)
    with pytest.raises(ValueError, match=r"num_stack_layers=2: only the modes that inject stacks"):
        config(stack_mode="hires_string", num_stack_layers=2)
    with pytest.raises(ValueError, match=r"stack_start_layer=6: .* 3 stacks"):
        config(num_stack_layers=3, stack_start_layer=6)


@pytest.mark.parametrize(
    "mode,context,seen",
    [("none", 16, 16), ("llm", 16, 80), ("vit", 16, 80), ("hires_string", 64, 64), ("global_hires_string", 80, 80),
     ("dim_concat", 16, 80), ("dummy", 16, 16)],
)
def test_context_and_visual_tokens_per_mode_follow_the_table_of_modes(mode, context, seen):
    c = config(stack_mode=mode)  # N = 16, S = 4
    assert (c.image_seq_length, c.num_visual_tokens_seen) == (context, seen)


def test_fewer_injected_stacks_see_fewer_visual_tokens():
    assert config(num_stack_layers=2).num_visual_tokens_seen == 48


def test_every_mode_has_its_vision_code():
    from deepstack import DeepStackForConditionalGeneration
    from deepstack.model.modes import STACK_MODES

    assert set(DeepStackForConditionalGeneration.VISION_SIDE) == set(STACK_MODES)
