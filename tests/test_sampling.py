"""sample_stacks and the crop mosaic (docs/method.md, "Sampling2D")."""

import pytest
import torch

from deepstack import sample_stacks
from deepstack.method.sampling import mosaic_crops


def labelled_grid(height, width, batch=1):
    """grid[b, r, c] = (b, r, c): every cell carries its own coordinates."""
    b, r, c = torch.meshgrid(torch.arange(batch), torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([b, r, c], dim=-1).float()


def test_2d_spatial_hand_computed():
    grid = torch.arange(16.0).reshape(1, 4, 4, 1)  # cell (r, c) holds 4r + c
    stacks = sample_stacks(grid, 2, "2d_spatial")[0, :, :, 0]
    assert stacks.tolist() == [
        [0, 2, 8, 10],  # offset (0, 0)
        [1, 3, 9, 11],  # offset (0, 1)
        [4, 6, 12, 14],  # offset (1, 0)
        [5, 7, 13, 15],  # offset (1, 1)
    ]


def test_2d_grid_hand_computed():
    grid = torch.arange(16.0).reshape(1, 4, 4, 1)
    stacks = sample_stacks(grid, 2, "2d_grid")[0, :, :, 0]
    assert stacks.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_1d_sequential_hand_computed():
    grid = torch.arange(16.0).reshape(1, 4, 4, 1)
    stacks = sample_stacks(grid, 2, "1d_sequential")[0, :, :, 0]
    assert stacks.tolist() == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_2d_spatial_alignment(scale):
    h, w = 3, 4
    grid = labelled_grid(scale * h, scale * w, batch=2)
    stacks = sample_stacks(grid, scale, "2d_spatial")
    assert stacks.shape == (2, scale * scale, h * w, 3)
    for b in range(2):
        for di in range(scale):
            for dj in range(scale):
                for i in range(h):
                    for j in range(w):
                        cell = stacks[b, di * scale + dj, i * w + j].tolist()
                        assert cell == [b, scale * i + di, scale * j + dj]


@pytest.mark.parametrize("method", ["2d_spatial", "2d_grid", "1d_sequential"])
def test_union_of_stacks_is_the_whole_grid(method):
    grid = labelled_grid(6, 6, batch=2)
    stacks = sample_stacks(grid, 3, method)
    for b in range(2):
        cells = {tuple(cell) for cell in stacks[b].reshape(-1, 3).tolist()}
        assert len(cells) == 36 and all(cell[0] == b for cell in cells)


def test_mosaic_puts_crops_back_in_place():
    # 2x2 crops of a 3x3 grid each, crop k filled with k; cell (i, j) of crop (ci, cj) lands at (3ci+i, 3cj+j)
    crops = torch.arange(4.0).reshape(1, 4, 1, 1).expand(1, 4, 9, 1)
    grid = mosaic_crops(crops, 2, 3, 3)[0, :, :, 0]
    assert grid[:3, :3].eq(0).all() and grid[:3, 3:].eq(1).all()
    assert grid[3:, :3].eq(2).all() and grid[3:, 3:].eq(3).all()
    assert torch.equal(sample_stacks(mosaic_crops(crops, 2, 3, 3), 2, "2d_grid"), crops)


def test_grid_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="5x4 grid does not divide"):
        sample_stacks(torch.zeros(1, 5, 4, 2), 2)
    with pytest.raises(ValueError, match="unknown method"):
        sample_stacks(torch.zeros(1, 4, 4, 2), 2, "3d")
