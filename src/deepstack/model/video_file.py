"""Video files -> frames -> the square mosaic of ``video`` (Table 3), decoded with PyAV (FFmpeg's libraries).

PyAV is an optional dependency: ``pip install 'deepstack[video]'`` (the ``dev`` extra has it too).

A file is read in two passes: the first counts the video stream's packets (one per frame, no decoding) and
checks them against what the container declares, the second decodes up to the last frame wanted and keeps only
the sampled ones, so a long video never sits in memory. A file that is missing, empty, not a video, without a
video stream, without frames, or cut short (fewer packets than its index lists; for containers without a frame
count, packets that end before 90% of the declared duration) is a ``ValueError`` naming the file, what is wrong
and what to do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .video import COLS, NUM_FRAMES, ROWS, frames_to_image, place_videos, sample_indices

FIX = "re-download it, or re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)"
COVERED = 0.9  # packets must reach this share of a declared duration, else the file was cut short


def _pyav():
    try:
        import av
    except ImportError:
        raise ImportError("reading video files needs PyAV, which is not installed: pip install 'deepstack[video]' "
                          "(or pip install av)") from None
    return av


def _open(path: Path):
    """The opened container and its first video stream, or a ``ValueError`` about the file."""
    if not path.is_file():
        raise ValueError(f"{path}: no such video file" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: an empty file (0 bytes), not a video; {FIX}")
    av = _pyav()
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise ValueError(f"{path}: not a video file FFmpeg can read, or cut short before its index "
                         f"({getattr(error, 'strerror', None) or error}); {FIX}") from None
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams})
        container.close()
        if kinds:
            raise ValueError(f"{path}: holds no video stream, only {' and '.join(kinds)}; give a video file")
        raise ValueError(f"{path}: holds no streams at all: cut short before its index, or not a video; {FIX}")
    return container, container.streams.video[0]


def _duration(container) -> float | None:
    return container.duration / 1_000_000 if container.duration else None  # FFmpeg's AV_TIME_BASE: microseconds


def count_frames(path: str | os.PathLike) -> int:
    """The number of frames of the file's first video stream, counted from its packets without decoding; a
    ``ValueError`` when the file cannot be read, has no frames, or was cut short (see the module's docstring)."""
    path = Path(path)
    container, stream = _open(path)
    av = _pyav()
    declared, duration, packets, start, end = stream.frames, _duration(container), 0, None, None
    try:
        with container:
            for packet in container.demux(stream):
                if not packet.size:  # the empty packet that ends the stream
                    continue
                packets += 1
                if packet.pts is not None and packet.time_base is not None:
                    begin = float(packet.pts * packet.time_base)
                    start = begin if start is None else min(start, begin)
                    finish = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                    end = finish if end is None else max(end, finish)
    except av.FFmpegError as error:
        raise ValueError(f"{path}: damaged after {packets} frame(s) ({getattr(error, 'strerror', None) or error}); "
                         f"{FIX}") from None
    if packets == 0:
        raise ValueError(f"{path}: holds no video frames" + (f" though its index lists {declared}" if declared else "")
                         + f"; the file is empty or cut short: {FIX}")
    if declared and packets < declared:
        raise ValueError(f"{path}: cut short: its index lists {declared} frames but only {packets} are in the file; "
                         f"{FIX}")
    if not declared and duration and end is not None and end - start < COVERED * duration:
        raise ValueError(f"{path}: cut short: its frames end at {end - start:.2f} s of the {duration:.2f} s it "
                         f"declares; {FIX}")
    return packets


def _decode(path: Path, wanted: list[int]) -> tuple[dict[int, Image.Image], int]:
    """The frames at ``wanted`` positions (decoding order) and how many frames were decoded in all."""
    container, stream = _open(path)
    av = _pyav()
    stream.thread_type = "AUTO"
    keep, frames, decoded = set(wanted), {}, 0
    try:
        with container:
            for frame in container.decode(stream):
                if decoded in keep:
                    frames[decoded] = frame.to_image()
                decoded += 1
                if decoded > wanted[-1]:
                    break
    except av.FFmpegError as error:
        raise ValueError(f"{path}: damaged at frame {decoded} ({getattr(error, 'strerror', None) or error}); "
                         f"{FIX}") from None
    return frames, decoded


def read_frames(path: str | os.PathLike, num_frames: int = NUM_FRAMES) -> list[Image.Image]:
    """``num_frames`` RGB frames sampled uniformly over the video (``video.sample_indices``: first and last
    frame included; a video shorter than ``num_frames`` repeats frames), in time order."""
    path = Path(path)
    total = count_frames(path)
    wanted = sample_indices(total, num_frames)
    frames, decoded = _decode(path, wanted)
    if decoded <= wanted[-1]:  # the decoder dropped frames it could not decode (e.g. before the first key frame)
        if decoded == 0:
            raise ValueError(f"{path}: none of its {total} frames decode; {FIX}")
        wanted = sample_indices(decoded, num_frames)
        frames, again = _decode(path, wanted)
        if again <= wanted[-1]:
            raise ValueError(f"{path}: only {again} of its {total} frames decode; {FIX}")
    return [frames[index] for index in wanted]


def load_video(path: str | os.PathLike, rows: int = ROWS, cols: int = COLS, side: int | None = None) -> Image.Image:
    """The video at ``path`` as one square image: ``rows * cols`` frames sampled uniformly, tiled row-major,
    resized to a square (Table 3; ``video.frames_to_image``)."""
    return frames_to_image(read_frames(path, rows * cols), rows, cols, side)


def load_video_bytes(data: bytes, rows: int = ROWS, cols: int = COLS) -> Image.Image:
    """``load_video`` for a video file held in memory (a server's upload): the same checks, its errors say "the
    video" instead of a path."""
    with tempfile.TemporaryDirectory(prefix="deepstack-video-") as folder:
        path = Path(folder) / "video"
        path.write_bytes(data)
        try:
            return load_video(path, rows, cols)
        except ValueError as error:
            raise ValueError(str(error).replace(f"{path}: ", "the video: ").replace(str(path), "the video")) from None


def video_image(video, rows: int = ROWS, cols: int = COLS) -> Image.Image:
    """One video as its square mosaic. ``video``: a file path, a list of PIL frames in time order, or an array
    or tensor of frames ``(T, H, W, 3)`` or ``(T, 3, H, W)`` of uint8."""
    if isinstance(video, (str, os.PathLike)):
        return load_video(video, rows, cols)
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or 3 not in (video.shape[1], video.shape[-1]):
            raise ValueError(f"a video array must be (frames, height, width, 3) or (frames, 3, height, width), "
                             f"got shape {video.shape}")
        if video.shape[-1] != 3:
            video = video.transpose(0, 2, 3, 1)
        if video.dtype != np.uint8:
            raise ValueError(f"a video array must hold uint8 pixels (0-255), got {video.dtype}")
        video = [Image.fromarray(frame) for frame in video]
    if isinstance(video, (list, tuple)) and all(isinstance(frame, Image.Image) for frame in video):
        return frames_to_image(video, rows, cols)
    if isinstance(video, Image.Image):
        raise TypeError("one image is not a video: pass it in images= with an <image> placeholder, or give the "
                        "video's frames as a list")
    raise TypeError(f"a video is a file path, a list of PIL frames or a uint8 array of frames, "
                    f"not {type(video).__name__}")


def _videos(videos) -> list:
    """``videos`` as a flat list of videos: one video (a path, an array, a list of PIL frames) or a list of them."""
    if videos is None:
        return []
    if isinstance(videos, (str, os.PathLike, np.ndarray, torch.Tensor, Image.Image)):
        return [videos]  # one video (one image is refused by ``video_image``, with a message)
    videos = list(videos)
    if videos and all(isinstance(frame, Image.Image) for frame in videos):
        return [videos]  # one video given as its frames
    return videos


def _images(images, texts: list[str], image_token: str) -> list:
    """``images`` in the forms ``DeepStackProcessor`` takes (one, a flat list, a list per prompt), flattened."""
    if images is None:
        return []
    if isinstance(images, Image.Image):
        return [images]
    if all(isinstance(item, (list, tuple)) for item in images) and len(images) == len(texts):
        for index, (per_prompt, text) in enumerate(zip(images, texts)):
            if len(per_prompt) != text.count(image_token):
                raise ValueError(f"prompt {index} has {text.count(image_token)} {image_token} placeholder(s) but "
                                 f"{len(per_prompt)} image(s)")
        return [image for per_prompt in images for image in per_prompt]
    return list(images)


def videos_as_images(images, videos, texts: list[str], image_token: str) -> tuple[list, list[str]]:
    """What ``DeepStackProcessor(images=, videos=, text=)`` does with videos: each becomes its square mosaic
    (``video_image``) and each ``<video>`` placeholder an image placeholder, so the images, mosaics and prompts
    then go through the image path unchanged. ``videos``: one video or a flat list, one per ``<video>`` over all
    prompts in order."""
    return place_videos(_images(images, texts, image_token), [video_image(video) for video in _videos(videos)],
                        texts, image_token)


__all__ = ["count_frames", "load_video", "read_frames", "video_image", "videos_as_images"]
