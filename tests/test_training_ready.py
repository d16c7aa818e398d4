"""Loss with labels, gradient checkpointing, mixed precision, freezing."""

import pytest
import torch

from tests.fixtures import tiny


def loss_and_grads(model, inputs):
    model.zero_grad()
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["llm", "vit"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(images, mode):
    model, processor = tiny(mode)
    model.train()
    inputs = processor(images=images[:2], text=["<image>\nfirst answer", "the second <image> one"])
    loss, grads = loss_and_grads(model, inputs)
    model.gradient_checkpointing_enable()
    layers = list(model.decoder_layers) + list(model.vision_layers)
    assert all(layer.gradient_checkpointing for layer in layers), "every decoder and encoder layer is checkpointed"
    loss_ckpt, grads_ckpt = loss_and_grads(model, inputs)
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys()
    assert any(name.startswith("projector") for name in grads) and any("vision_tower" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_stacks_receive_gradient_through_the_injection(images):
    llm, processor = tiny("llm")
    none, _ = tiny("none")
    none.load_state_dict(llm.state_dict())
    inputs = processor(images=images[:1], text="<image>\nanswer")
    _, grads_llm = loss_and_grads(llm.train(), inputs)
    _, grads_none = loss_and_grads(none.train(), {**inputs, "pixel_values": inputs["pixel_values"][:, :1]})
    # the projector also sees the stacks in llm mode, so its gradient differs from the global-only one
    assert (grads_llm["projector.linear_1.weight"] - grads_none["projector.linear_1.weight"]).abs().max() > 0


@pytest.mark.parametrize("llm_dtype,vision_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("mode", ["llm", "vit"])
def test_mixed_precision_towers(images, llm_dtype, vision_dtype, mode):
    model, processor = tiny(mode)
    inputs = processor(images=images[:1], text="<image>\nq")
    with torch.no_grad():
        reference = model(**inputs).logits
        model.language_model.to(llm_dtype)
        model.vision_tower.to(vision_dtype)
        out = model(**inputs).logits
    assert out.dtype == llm_dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.1)
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_autocast_bf16_forward_and_backward(images):
    model, processor = tiny("llm")
    inputs = processor(images=images[:1], text="<image>\nq")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs, labels=inputs["input_ids"].masked_fill(inputs["input_ids"] == 262, -100)).loss
    loss.backward()
    assert torch.isfinite(loss) and model.projector.linear_1.weight.grad is not None


def test_freezing_helpers(images):
    model, processor = tiny("llm")
    model.set_trainable(vision=False, projector=True, language=False)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"projector"}
    model.train()
    inputs = processor(images=images[:1], text="<image>\nq")
    _, grads = loss_and_grads(model, inputs)
    assert grads and all(name.startswith("projector") for name in grads)
    model.set_trainable(vision=False, projector=True, language=True)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"projector", "language_model"}
