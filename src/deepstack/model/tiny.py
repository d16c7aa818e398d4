"""Tiny parts built locally from configs, with random weights, for tests, the demo, the lab and small
benchmarks: a byte-level BPE tokenizer, CLIP / SigLIP vision configs and Llama / Qwen2 / Mistral / Phi-3
text configs of a few layers."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
VISION_NAMES = ("tiny-clip", "tiny-siglip")


def tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer made locally: every UTF-8 string encodes. Without a corpus it has the 256
    byte tokens and no merges; with one, ``vocab_size`` tokens learned from it (its words become one token
    each, so sequences are several times shorter)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    if corpus is None:
        vocab = {token: index for index, token in enumerate(specials + sorted(alphabet))}
        backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    else:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
        )
        backend.train_from_iterator(corpus, trainer)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_vision_config(
    kind: str = "clip", image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 6,
    num_heads: int = 4,
):
    common = dict(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
    )
    if kind == "clip":
        return CLIPVisionConfig(**common)
    if kind == "siglip":
        return SiglipVisionConfig(**common)
    raise ValueError(f"unknown tiny vision encoder {kind!r}; choose clip or siglip")


TINY_TEXT_CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig, "phi3": Phi3Config}


def tiny_text_config(kind: str = "llama", vocab_size: int = 262, hidden_size: int = 64, num_layers: int = 8):
    if kind not in TINY_TEXT_CONFIGS:
        raise ValueError(f"unknown tiny LLM {kind!r}; choose one of {', '.join(TINY_TEXT_CONFIGS)}")
    tokenizer = tiny_tokenizer()
    return TINY_TEXT_CONFIGS[kind](
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )

LANGUAGE_NAMES = tuple(f"tiny-{kind}" for kind in TINY_TEXT_CONFIGS)
