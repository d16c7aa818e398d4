"""save_pretrained / from_pretrained, parts from local checkpoints, and the real SmolLM2 LLM."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

from deepstack import DeepStackForConditionalGeneration, DeepStackProcessor, build_model, load_pretrained
from deepstack.model.parts import SMOLLM2_GGUF, smollm2_gguf_path
from deepstack.model.tiny import tiny_text_config, tiny_tokenizer, tiny_vision_config
from tests.fixtures import tiny


@pytest.mark.parametrize("mode", ["llm", "vit", "dim_concat", "global_hires_string"])
def test_round_trip_gives_identical_logits(tmp_path, images, mode):
    model, processor = tiny(mode, stack_sampling="2d_grid")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = DeepStackForConditionalGeneration.from_pretrained(tmp_path)
    loaded_processor = DeepStackProcessor.from_pretrained(tmp_path)
    assert loaded.config.stack_mode == mode and loaded.config.stack_sampling == "2d_grid"
    inputs = processor(images=images[:2], text=["<image>\nq", "<image> another"])
    loaded_inputs = loaded_processor(images=images[:2], text=["<image>\nq", "<image> another"])
    for key in inputs:
        assert torch.equal(inputs[key], loaded_inputs[key]), key
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)


def test_build_from_separately_saved_local_checkpoints(tmp_path, images):
    torch.manual_seed(0)
    vision = CLIPVisionModel(tiny_vision_config())
    vision.save_pretrained(tmp_path / "vision")
    language = AutoModelForCausalLM.from_config(tiny_text_config("qwen2"))
    language.save_pretrained(tmp_path / "language")
    tiny_tokenizer().save_pretrained(tmp_path / "language")
    model, processor = build_model(tmp_path / "vision", tmp_path / "language", stack_mode="llm")
    assert model.config.text_config.model_type == "qwen2"
    for name, tensor in vision.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[name], tensor)
    language_state = model.language_model.state_dict()
    for name, tensor in language.state_dict().items():
        if "embed_tokens" in name or "lm_head" in name:  # grown by one row for <image>
            assert torch.equal(language_state[name][: tensor.shape[0]], tensor)
        else:
            assert torch.equal(language_state[name], tensor)
    out = model.generate(**processor(images=images[:1], text="<image>\nq"), max_new_tokens=2, do_sample=False)
    assert out.shape[1] > 2


def test_unknown_parts_are_refused_without_reaching_a_hub(tmp_path):
    with pytest.raises(ValueError, match="neither a local checkpoint directory nor a known name"):
        build_model("openai/clip-vit-large-patch14-336", "tiny-llama")
    with pytest.raises(ValueError, match="not a saved DeepStack model"):
        load_pretrained(tmp_path)


@pytest.fixture(scope="module")
def smollm2():
    model, processor = build_model("tiny-clip", "smollm2-135m", stack_mode="none")
    return model, processor


def test_smollm2_none_mode_text_prompt_gives_exactly_the_plain_smollm2_logits(smollm2):
    folder = smollm2_gguf_path().parent
    plain = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model, processor = smollm2
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ours = processor(text=text, add_special_tokens=False)
    reference = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    assert torch.equal(ours["input_ids"], reference["input_ids"])
    with torch.no_grad():
        logits = model(**ours).logits
        expected = plain(**reference).logits
    assert logits.shape[-1] == expected.shape[-1] + 1  # the added <image> token
    assert torch.equal(logits[..., : expected.shape[-1]], expected)


def test_smollm2_answers_with_its_chat_template(smollm2, images):
    model, processor = smollm2
    assert "<|im_start|>assistant" in processor.format_prompt("<image>\nhi")
    inputs = processor(images=images[:1], text="<image>\nWhat is the capital of France?", use_chat_template=True)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip()  # a real LLM gives some text, whatever the random image projector adds
