"""Small helpers every experiment uses: seeding, devices, figures."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from worldplan.checkpoint import atomic_write_bytes


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch (module initialisation draws from the global torch
    generator) and return a fresh numpy generator for the caller's own draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for a device this machine does not have
    (CUDA without a GPU, cuda:N past the last GPU, an unknown type) is an error."""
    usage = "use cpu, cuda, cuda:N or auto"
    if not isinstance(name, str):
        raise ValueError(f"device must be a string ({usage}), got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r} ({usage})") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r} ({usage})")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for but CUDA is not available on this "
                             "machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for but MPS is not available (use cpu)")
    return device


# ------------------------------------------------------------------------ figures
def figure_problems(fig) -> list[str]:
    """What keeps a figure from being read without the README: an axes with data but no
    title (neither its own nor the figure's), no x label (none in its column of panels) or
    y label (none in its row), several labelled series and no legend in the figure, or a
    legend drawn over the data (bars, points of lines). Empty when fine."""
    problems: list[str] = []
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    has_suptitle = fig._suptitle is not None and fig._suptitle.get_text().strip()
    fig_legends = list(fig.legends)
    all_legends = fig_legends + [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    boxes = [tuple(np.round(a.get_position().bounds, 3)) for a in fig.axes]
    xlabelled = {b[0] for a, b in zip(fig.axes, boxes, strict=True) if a.get_xlabel().strip()}
    ylabelled = {b[1] for a, b in zip(fig.axes, boxes, strict=True) if a.get_ylabel().strip()}
    titled = {b[0] for a, b in zip(fig.axes, boxes, strict=True) if a.get_title().strip()}
    for k, (ax, box) in enumerate(zip(fig.axes, boxes, strict=True)):
        artists = ax.lines + ax.patches + ax.collections + ax.images
        twin = box in boxes[:k]  # twinx(): title and x label belong to the first axes
        if not artists or not ax.get_visible() or getattr(ax, "_colorbar", None) is not None:
            continue
        name = ax.get_title() or f"axes {k}"
        if not (box[0] in titled or has_suptitle or twin):  # one title per column of panels
            problems.append(f"{name}: no title")
        if ax.axison and not ax.images:
            if box[0] not in xlabelled and not twin:
                problems.append(f"{name}: no x label")
            if box[1] not in ylabelled and not ax.get_ylabel().strip():
                problems.append(f"{name}: no y label")
        labelled = [a for a in artists if not str(a.get_label()).startswith("_")]
        if len(labelled) > 1 and not all_legends:
            problems.append(f"{name}: {len(labelled)} labelled series but no legend")
        own = [ax.get_legend()] if ax.get_legend() is not None else []
        for legend in own + fig_legends:
            lbox = legend.get_window_extent(renderer)
            for patch in ax.patches:
                if patch.get_visible() and lbox.overlaps(patch.get_window_extent(renderer)):
                    problems.append(f"{name}: the legend covers a bar")
                    break
            if legend not in own:
                continue
            for line in ax.lines:
                pts = ax.transData.transform(np.asarray(line.get_xydata(), float))
                inside = ((pts[:, 0] > lbox.x0) & (pts[:, 0] < lbox.x1)
                          & (pts[:, 1] > lbox.y0) & (pts[:, 1] < lbox.y1))
                if inside.any() and line.get_visible():
                    problems.append(f"{name}: the legend covers data of {line.get_label()}")
                    break
    return problems


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG (atomically) and close it; a figure that could not
    be read on its own (see :func:`figure_problems`) is logged as a warning."""
    import io
    import logging

    import matplotlib.pyplot as plt

    problems = figure_problems(fig)
    if problems:
        logging.getLogger(__name__).warning("figure %s: %s", Path(path).name,
                                            "; ".join(problems))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------ progress
PROGRESS_SECONDS = 5.0


class _LineStream:
    """What tqdm writes, as whole lines: a non-interactive log gets one line per display
    instead of carriage-return redraws."""

    def __init__(self, stream, interval: float) -> None:
        self._stream, self.interval = stream, interval
        self._last = ""
        self._time = -float("inf")

    def write(self, text: str) -> int:
        import time

        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        now = time.monotonic()
        # bars that refresh on every set_postfix would still flood: keep one line per
        # interval, and every bar's last line (100%)
        due = now - self._time >= self.interval or "100%|" in line
        if line and line != self._last and due:
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last, self._time = line, now
        return len(text)

    @property
    def stream(self):
        import sys

        return self._stream if self._stream is not None else sys.stderr  # stderr as it is now

    def flush(self) -> None:
        self.stream.flush()


_TQDM_INIT = None


def configure_progress(stream=None, interval: float = PROGRESS_SECONDS,
                       force: bool = False) -> bool:
    """When ``stream`` (default stderr) is not a terminal, make every tqdm bar log one line
    every ``interval`` seconds at most, as plain lines. Returns whether it did."""
    global _TQDM_INIT
    import sys

    import tqdm.std

    target = stream or sys.stderr
    if not force and (getattr(target, "isatty", lambda: False)() or _TQDM_INIT is not None):
        return False
    restore_progress()
    original = tqdm.std.tqdm.__init__
    lines = _LineStream(stream, interval)  # None: whatever sys.stderr is when writing

    def __init__(self, *args, **kwargs):
        kwargs["mininterval"] = max(float(kwargs.get("mininterval") or 0.1), interval)
        kwargs["maxinterval"] = max(float(kwargs.get("maxinterval") or 10.0), interval)
        if kwargs.get("file") in (None, sys.stderr, sys.stdout, target):
            kwargs["file"] = lines
        kwargs.setdefault("ncols", 100)
        original(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = __init__
    _TQDM_INIT = original
    return True


def restore_progress() -> None:
    """Undo :func:`configure_progress`."""
    global _TQDM_INIT
    import tqdm.std

    if _TQDM_INIT is not None:
        tqdm.std.tqdm.__init__ = _TQDM_INIT
        _TQDM_INIT = None


# ------------------------------------------------------------------------ log lines
def brief(value, digits: int = 4):
    """``value`` for a log line: floats to ``digits`` significant digits, inside dicts,
    lists and tuples too (``{'rmse': 0.1234}``, not ``0.12341234123412341``)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: brief(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(brief(v, digits) for v in value)
    return value


class BriefNumbers:
    """A logging filter that shortens the floats inside dict and list arguments of a log
    record (:func:`brief`); plain float arguments keep the record's own format."""

    def filter(self, record) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, (dict, list, tuple))
                                                  for a in record.args):
            record.args = tuple(brief(a) if isinstance(a, (dict, list, tuple)) else a
                                for a in record.args)
        elif isinstance(record.args, dict) and record.args:
            record.args = brief(record.args)
        return True
