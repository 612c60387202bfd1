"""Videos every browser and notebook plays: H.264 (``avc1``) in MP4, yuv420p.

Written through the ``imageio-ffmpeg`` wheel (a static ffmpeg with libx264), else through
OpenCV's ``avc1`` writer where its build has one; never MPEG-4 Part 2 (``mp4v``), which
browsers do not play. The file is written beside its target and renamed into place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class VideoError(RuntimeError):
    """No H.264 encoder is available, or encoding failed."""


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 with yuv420p needs even sides: pad by one pixel where needed."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _write_ffmpeg(frames: list[np.ndarray], tmp: Path, fps: float) -> None:
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264",
                                         pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                                         macro_block_size=1, quality=None,
                                         output_params=["-crf", "23", "-movflags", "+faststart"],
                                         ffmpeg_log_level="error")
    writer.send(None)
    try:
        for f in frames:
            writer.send(np.ascontiguousarray(f))
    finally:
        writer.close()


def _write_opencv(frames: list[np.ndarray], tmp: Path, fps: float) -> None:
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"avc1"), fps, (w, h))
    if not writer.isOpened():
        raise VideoError("OpenCV has no H.264 (avc1) encoder in this build")
    try:
        for f in frames:
            writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    finally:
        writer.release()


def write_video(frames: Iterable[np.ndarray], path: Path, fps: float = 20) -> Path | None:
    """Write RGB frames ``[H, W, 3]`` (uint8) to ``path`` as H.264 MP4; ``None`` if there
    are no frames. Raises :class:`VideoError` when no H.264 encoder is available."""
    frames = [_even(np.asarray(f, np.uint8)) for f in frames if f is not None]
    if not frames:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    errors = []
    for writer in (_write_ffmpeg, _write_opencv):
        try:
            writer(frames, tmp, fps)
            os.replace(tmp, path)
            return path
        except Exception as exc:  # try the next encoder
            errors.append(f"{writer.__name__[7:]}: {type(exc).__name__}: {exc}")
            tmp.unlink(missing_ok=True)
    raise VideoError("cannot write H.264 video " + str(path) + " (" + "; ".join(errors) + ")")


def video_codec(path: Path) -> str:
    """The codec name of the first video stream of ``path`` (e.g. ``h264``), read by
    ffmpeg, and check that every frame decodes."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frames = sum(1 for _ in reader)
    codec = str(meta.get("codec", "")).split()[0]
    if frames == 0:
        raise VideoError(f"{path} holds no decodable frame")
    return codec
