"""The road: a straight highway of ``n_lanes`` lanes, lane 0 on the right (y = 0 edge)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Road:
    """Geometry in metres. x runs along the road, y across it (lane i spans
    ``[i * lane_width, (i + 1) * lane_width]``). The evaluation segment is
    ``[before, before + segment]``; cars enter at x = 0 and leave at ``length``."""

    n_lanes: int = 6
    lane_width: float = 3.7
    before: float = 36.0
    segment: float = 215.0
    after: float = 36.0

    def __post_init__(self) -> None:
        if self.n_lanes < 1:
            raise ValueError(f"n_lanes must be >= 1, got {self.n_lanes}")
        for name in ("lane_width", "segment"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def length(self) -> float:
        return self.before + self.segment + self.after

    @property
    def width(self) -> float:
        return self.n_lanes * self.lane_width

    @property
    def segment_end(self) -> float:
        return self.before + self.segment

    def lane_centre(self, lane):
        return (lane + 0.5) * self.lane_width

    def lane_of(self, y):
        """Lane index of lateral position(s) ``y`` (clipped to the road)."""
        import numpy as np

        return np.clip(np.floor(np.asarray(y) / self.lane_width), 0, self.n_lanes - 1).astype(int)
