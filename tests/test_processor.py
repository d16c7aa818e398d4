"""DeepStackProcessor: views, token counts per mode, placeholders, padding, chat template."""

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures import random_image, tiny

N, S = 16, 4  # tiny models: 32x32 input, 8x8 patches, hires_scale 2


@pytest.mark.parametrize(
    "mode,tokens,views",
    [
        ("none", N, 1),
        ("llm", N, 1 + S),
        ("vit", N, 1 + S),
        ("dim_concat", N, 1 + S),
        ("dummy", N, 1),
        ("hires_string", S * N, 1 + S),
        ("global_hires_string", (1 + S) * N, 1 + S),
    ],
)
def test_context_length_per_mode(images, mode, tokens, views):
    model, processor = tiny(mode)
    inputs = processor(images=images[:1], text="<image>\nq")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == tokens == model.config.image_seq_length
    assert inputs["pixel_values"].shape == (1, views, 3, 32, 32)
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_hires_scale_3_gives_9_crops_and_stacks(images):
    model, processor = tiny("dim_concat", hires_scale=3)  # 9 stacks do not fit the 8-layer tiny LLM in llm mode
    inputs = processor(images=images[:1], text="<image>")
    assert inputs["pixel_values"].shape[1] == 10
    assert model.hires_stacks(inputs["pixel_values"][:, 1:]).shape == (1, 9, 16, 32)
    assert model.projector.linear_1.in_features == 10 * 32
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_both_views_follow_the_same_pad_and_resize_rule():
    _, processor = tiny("llm")
    wide = random_image(7, (90, 40))  # padded top and bottom
    views = processor.image_views(wide)  # (5, 3, 32, 32) normalised
    mosaic = np.concatenate([np.concatenate([views[1], views[2]], 2), np.concatenate([views[3], views[4]], 2)], 1)
    downsampled = torch.nn.functional.avg_pool2d(torch.from_numpy(mosaic)[None], 2)[0].numpy()
    # the padding bands coincide exactly: rows 0..8 of the global view are the mean colour (0 after norm)
    assert np.abs(views[0][:, :8]).max() < 0.05 and np.abs(downsampled[:, :8]).max() < 0.05
    # and the content agrees up to resampling blur
    assert np.corrcoef(views[0].ravel(), downsampled.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16", "1"])
def test_any_image_mode_and_aspect(mode):
    _, processor = tiny("llm")
    image = random_image(3, (20, 70)).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) * 200))
    views = processor.image_views(image)
    assert views.shape == (5, 3, 32, 32) and np.isfinite(views).all()


def test_transparent_pixels_become_the_background_colour():
    _, processor = tiny("none")
    clear = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    assert np.abs(processor.image_views(clear)).max() < 0.05  # the mean colour normalises to ~0


def test_placeholder_and_image_counts_must_match(images):
    _, processor = tiny("llm")
    with pytest.raises(ValueError, match=r"1 image\(s\) given but the prompt\(s\) hold 2 <image>"):
        processor(images=images[:1], text="<image> and <image>")
    with pytest.raises(ValueError, match=r"prompt 1 has 1 <image> placeholder\(s\) but 2 image\(s\)"):
        processor(images=[[images[0]], images[1:3]], text=["<image>", "<image>"])


def test_batch_with_padding_and_a_prompt_without_image(images):
    _, processor = tiny("llm")
    batch = processor(images=images[:1], text=["no image", "one <image> image"], padding_side="left")
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 1
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1].all()


def test_chat_template_wraps_the_prompt():
    _, processor = tiny("llm")
    text = processor.format_prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}])
    assert text == "<|user|>\n<image>\nhi<|end|>\n<|assistant|>\n"
    inputs = processor(images=random_image(0), text="<image>\nhi", use_chat_template=True)
    decoded = processor.decode(inputs["input_ids"][0])
    assert decoded.startswith("<|user|>\n<image><image>") and decoded.endswith("<|assistant|>\n")


def test_image_token_is_added_to_a_tokenizer_that_lacks_it():
    model, processor = tiny("llm")
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id == len(tokenizer) - 1
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert tokenizer("a<image>b")["input_ids"].count(model.config.image_token_id) == 1


def test_an_empty_image_is_refused():
    _, processor = tiny("llm")
    with pytest.raises(ValueError, match="0x5 pixels has nothing to see"):
        processor(images=Image.new("RGB", (0, 5)), text="<image>\nq")


def test_a_symlink_loop_is_named(tmp_path):
    from deepstack.model.processing import load_image

    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(ValueError, match="loop.png: a symlink loop"):
        load_image(loop)
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "gone.png")
    with pytest.raises(ValueError, match="dangling.png: a broken symlink"):
        load_image(dangling)
