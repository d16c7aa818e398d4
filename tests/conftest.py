import pytest
import torch

from tests.fixtures import random_image


@pytest.fixture
def images():
    return [random_image(0), random_image(1, (30, 64)), random_image(2, (64, 64))]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
