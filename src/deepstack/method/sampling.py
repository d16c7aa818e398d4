"""Sampling2D: from a high-resolution feature grid to S = s*s stacks (paper Sec. 3.2, Table 5, Fig. 5).

Every function here is a pure tensor reshape: no copies beyond the final ``reshape``, no Python loops over
the batch, so the same code runs under autograd, on CUDA and inside ``torch.compile``.
"""

from __future__ import annotations

import torch

SAMPLING_METHODS = ("2d_spatial", "2d_grid", "1d_sequential")


def mosaic_crops(crops: torch.Tensor, scale: int, height: int, width: int) -> torch.Tensor:
    """Tile the feature maps of the ``scale x scale`` crops of one image back into one grid.

    ``crops`` has shape ``(batch, scale*scale, height*width, C)``, crops in row-major order over the image
    and tokens row-major inside each crop. Returns ``(batch, scale*height, scale*width, C)`` with
    ``grid[ci*height + i, cj*width + j] = crops[ci*scale + cj, i*width + j]``.
    """
    batch, num_crops, tokens, channels = crops.shape
    if num_crops != scale * scale or tokens != height * width:
        raise ValueError(
            f"mosaic_crops: expected {scale * scale} crops of {height}x{width}={height * width} tokens, "
            f"got {num_crops} crops of {tokens} tokens"
        )
    grid = crops.reshape(batch, scale, scale, height, width, channels).permute(0, 1, 3, 2, 4, 5)
    return grid.reshape(batch, scale * height, scale * width, channels)


def sample_stacks(grid: torch.Tensor, scale: int, method: str = "2d_spatial") -> torch.Tensor:
    """Split a hi-res feature grid into ``scale*scale`` stacks the size of the global grid.

    ``grid``: ``(batch, H, W, C)`` with ``H`` and ``W`` divisible by ``scale``. Returns
    ``(batch, scale*scale, (H//scale)*(W//scale), C)``; stack ``k``, token ``t`` (row-major over the global
    ``h x w`` grid, so that token ``t`` lands on the ``t``-th image position of the sequence):

    - ``2d_spatial`` (dilated, the paper's default): ``k = di*s + dj``, token ``(i, j)`` is
      ``grid[s*i + di, s*j + dj]``, the neighbour of global token ``(i, j)``.
    - ``2d_grid``: stack ``k`` is crop ``k`` (row-major over the ``s x s`` crops), a contiguous window.
    - ``1d_sequential``: flatten row-major; stack ``k`` is tokens ``k, k+S, k+2S, ...``.
    """
    if grid.dim() != 4:
        raise ValueError(f"sample_stacks: grid must be (batch, H, W, C), got shape {tuple(grid.shape)}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"sample_stacks: scale must be a positive integer, got {scale!r}")
    batch, height, width, channels = grid.shape
    if height % scale or width % scale:
        raise ValueError(
            f"sample_stacks: a {height}x{width} grid does not divide into {scale}x{scale} stacks; "
            f"both sides must be multiples of scale={scale}"
        )
    h, w, num_stacks = height // scale, width // scale, scale * scale
    if method == "2d_spatial":
        # rows are (i, di), columns (j, dj): move the offsets (di, dj) in front
        stacks = grid.reshape(batch, h, scale, w, scale, channels).permute(0, 2, 4, 1, 3, 5)
    elif method == "2d_grid":
        # rows are (ci, i), columns (cj, j): move the crop indices (ci, cj) in front
        stacks = grid.reshape(batch, scale, h, scale, w, channels).permute(0, 1, 3, 2, 4, 5)
    elif method == "1d_sequential":
        stacks = grid.reshape(batch, h * w, num_stacks, channels).transpose(1, 2)
    else:
        raise ValueError(f"sample_stacks: unknown method {method!r}; choose one of {', '.join(SAMPLING_METHODS)}")
    return stacks.reshape(batch, num_stacks, h * w, channels)
