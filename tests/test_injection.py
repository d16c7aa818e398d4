"""Where the stacks go (docs/method.md, "Injection into the LLM" and "DeepStack-V"), observed at the layers.

Hooks on every block record what the block really received and what it returned; the difference between
block idx's input and block idx-1's output is exactly what DeepStack added between them.
"""

import pytest
import torch

from deepstack.method.injection import add_rows, find_layers
from deepstack.model.modeling import feature_rows
from tests.fixtures import image_positions, tiny


def _hidden(value):
    return value[0] if isinstance(value, tuple) else value


def record_block_io(layers):
    inputs, outputs, handles = {}, {}, []
    for index, layer in enumerate(layers):

        def hook(module, args, kwargs, output, index=index):
            inputs[index] = _hidden(args[0] if args else kwargs["hidden_states"]).detach().clone()
            outputs[index] = _hidden(output).detach().clone()

        handles.append(layer.register_forward_hook(hook, with_kwargs=True))
    return inputs, outputs, handles


def injected_between_blocks(layers, run, first_input):
    """{idx: input of block idx minus what came before it} for idx >= 0 (block -1's output = first_input)."""
    inputs, outputs, handles = record_block_io(layers)
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    before = {0: first_input, **{i + 1: outputs[i] for i in range(len(layers) - 1)}}
    return {i: inputs[i] - before[i] for i in range(len(layers))}


def llm_injections(model, inputs):
    """The additions before every decoder layer for one forward, and the image features of that forward."""
    with torch.no_grad():
        image = model.get_image_features(inputs["pixel_values"])
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        mask = image_positions(inputs["input_ids"], model)
        embeds[mask] = torch.cat(image.pooler_output)
        added = injected_between_blocks(model.decoder_layers, lambda: model(**inputs), embeds)
    return added, image, mask


@pytest.mark.parametrize(
    "language,start,interval,count",
    [("tiny-llama", 1, 1, None), ("tiny-llama", 0, 1, None), ("tiny-qwen2", 1, 1, None), ("tiny-mistral", 0, 2, None),
     ("tiny-phi3", 2, 1, None), ("tiny-llama", 1, 2, 2)],
)
def test_llm_stacks_land_before_the_scheduled_layers_at_image_positions_only(images, language, start, interval, count):
    model, processor = tiny(
        "llm", language=language, stack_start_layer=start, stack_interval=interval, num_stack_layers=count
    )
    inputs = processor(images=images[:2], text=["<image>\nleft", "a longer prompt <image> then text"])
    added, image, mask = llm_injections(model, inputs)
    scheduled = [start + k * interval for k in range(count or 4)]
    assert len(image.deepstack_features) == len(scheduled)
    for index, delta in added.items():
        if index in scheduled:
            k = scheduled.index(index)
            assert delta[~mask].abs().max() == 0, f"text or padding changed before layer {index}"
            expected = feature_rows(image.deepstack_features[k])
            torch.testing.assert_close(delta[mask], expected, atol=1e-5, rtol=1e-4)
            assert delta[mask].abs().min() > 0 or expected.abs().min() == 0
        else:
            assert delta.abs().max() == 0, f"unexpected change before layer {index}"


def test_none_mode_adds_nothing_anywhere(images):
    model, processor = tiny("none")
    inputs = processor(images=images[:1], text="<image>\ndescribe")
    added, _, _ = llm_injections(model, inputs)
    assert all(delta.abs().max() == 0 for delta in added.values())


def test_stacks_come_from_the_hires_view_in_llm_mode_and_from_the_global_view_in_dummy_mode(images):
    model, processor = tiny("llm")
    inputs = processor(images=images[:1], text="<image>")
    image = model.get_image_features(inputs["pixel_values"])
    crops = inputs["pixel_values"][:, 1:]
    expected = model.projector(model.hires_stacks(crops))[0]  # (S, N, D)
    for k in range(4):
        torch.testing.assert_close(image.deepstack_features[k][0], expected[k])
    dummy, dummy_processor = tiny("dummy")
    dummy_image = dummy.get_image_features(dummy_processor(images=images[:1], text="<image>")["pixel_values"])
    for k in range(4):
        torch.testing.assert_close(dummy_image.deepstack_features[k][0], dummy_image.pooler_output[0])


def test_zero_stacks_give_the_logits_of_none_with_the_same_weights(images):
    llm, processor = tiny("llm")
    none, _ = tiny("none")
    none.load_state_dict(llm.state_dict())
    inputs = processor(images=images[:2], text=["<image>\nfirst", "second <image>"])
    image = llm.get_image_features(inputs["pixel_values"])
    zeroed = type(image)(
        pooler_output=image.pooler_output,
        deepstack_features=[[torch.zeros_like(t) for t in stack] for stack in image.deepstack_features],
    )
    text_inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
    with torch.no_grad():
        with_zero_stacks = llm(**text_inputs, mm_encoder_outputs={"image": zeroed}).logits
        with_stacks = llm(**inputs).logits
        plain = none(**text_inputs, pixel_values=inputs["pixel_values"][:, :1]).logits
    torch.testing.assert_close(with_zero_stacks, plain, atol=1e-6, rtol=1e-5)
    assert (with_stacks - plain).abs().max() > 1e-3  # and real stacks do change the output


@pytest.mark.parametrize("vision", ["tiny-clip", "tiny-siglip"])
def test_vit_stacks_land_before_encoder_layers_m_to_m_plus_s_minus_1_at_patch_tokens(images, vision):
    model, processor = tiny("vit", vision=vision, vit_stack_start_layer=1)
    pixels = processor(images=images[:2], text="<image><image>")["pixel_values"]
    layers = model.vision_layers
    global_view, crops = pixels[:, 0], pixels[:, 1:]
    with torch.no_grad():
        # the crops' states after layers 0..m-1, mosaicked and sampled, are the expected stacks
        crop_states = model.vision_tower(pixel_values=crops.flatten(0, 1), output_hidden_states=True).hidden_states[1]
        prefix = crop_states.shape[1] - 16
        from deepstack.method.sampling import mosaic_crops, sample_stacks

        stacks = sample_stacks(mosaic_crops(crop_states[:, prefix:].unflatten(0, (2, 4)), 2, 4, 4), 2)
        plain_states = model.vision_tower(pixel_values=global_view, output_hidden_states=True).hidden_states
        added = injected_between_blocks(
            layers, lambda: model.vision_features_with_stacks(global_view, crops), plain_states[0]
        )
    for index, delta in added.items():
        if 1 <= index <= 4:
            assert prefix == 0 or delta[:, :prefix].abs().max() == 0, "the CLS token must not change"
            torch.testing.assert_close(delta[:, prefix:], stacks[:, index - 1], atol=1e-5, rtol=1e-4)
        else:
            assert delta.abs().max() == 0, f"unexpected change before encoder layer {index}"


def test_vit_mode_leaves_the_llm_alone(images):
    model, processor = tiny("vit")
    inputs = processor(images=images[:1], text="<image>\nq")
    added, image, _ = llm_injections(model, inputs)
    assert image.deepstack_features is None
    assert all(delta.abs().max() == 0 for delta in added.values())


def test_no_hooks_survive_a_call_even_a_failing_one(images):
    model, processor = tiny("llm")
    inputs = processor(images=images[:1], text="<image>\nq")
    model(**inputs)

    def fail(module, args):
        raise RuntimeError("boom")

    handle = model.decoder_layers[5].register_forward_pre_hook(fail)  # a failure inside the LLM's forward
    with pytest.raises(RuntimeError, match="boom"):
        model(**inputs)
    handle.remove()
    for layer in list(model.decoder_layers) + list(model.vision_layers):
        assert not layer._forward_pre_hooks


def test_add_rows_casts_to_the_hidden_dtype_and_compiles_without_graph_breaks():
    hidden = torch.zeros(2, 5, 3, dtype=torch.bfloat16)
    positions = torch.tensor([1, 7])  # row 0 position 1, row 1 position 2
    rows = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # fp32
    out = add_rows(hidden, positions, rows)
    assert out.dtype == torch.bfloat16 and hidden.abs().max() == 0  # out of place
    assert out[0, 1].tolist() == [1, 2, 3] and out[1, 2].tolist() == [4, 5, 6]
    assert out.abs().sum() == 21
    compiled = torch.compile(add_rows, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(hidden, positions, rows), out)


def test_find_layers_names_the_problem():
    with pytest.raises(ValueError, match="no list of 7 layers"):
        find_layers(torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(1, 1)] * 3)), 7)
