import numpy as np
import pytest
import torch
from PIL import Image

from deepstack import build_model


def random_image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def images():
    return [random_image(0), random_image(1, (30, 64)), random_image(2, (64, 64))]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(mode: str = "llm", vision: str = "tiny-clip", language: str = "tiny-llama", **settings):
    """A tiny fp32 DeepStack model (32x32 input, 8x8 patches: N = 16 tokens, S = 4 stacks) and processor."""
    torch.manual_seed(0)
    return build_model(vision, language, stack_mode=mode, **settings)


def image_positions(input_ids: torch.Tensor, model) -> torch.Tensor:
    return input_ids == model.config.image_token_id
