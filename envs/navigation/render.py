"""Top-down OpenCV frames of the navigation task."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from worldplan.envs.maps import OccupancyGrid


def render_scene(
    grid: OccupancyGrid,
    trace: Sequence[np.ndarray],
    landmarks: np.ndarray,
    goal: np.ndarray,
    radius: float,
    size: int = 400,
) -> np.ndarray:
    """``[size, size, 3]`` uint8 RGB: map (dark = occupied), landmarks (blue), goal (green),
    the path driven so far and the robot (red)."""
    x0, x1, y0, y1 = grid.extent
    scale = size / max(x1 - x0, y1 - y0)
    w, h = int(round((x1 - x0) * scale)), int(round((y1 - y0) * scale))
    base = np.where(np.flipud(grid.occupied), 70, 245).astype(np.uint8)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_NEAREST)
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)

    def px(p: np.ndarray) -> tuple[int, int]:
        return int(round((p[0] - x0) * scale)), int(round((y1 - p[1]) * scale))

    for lm in landmarks:
        cx, cy = px(lm)
        pts = np.array([[cx, cy - 7], [cx - 6, cy + 5], [cx + 6, cy + 5]], dtype=np.int32)
        cv2.fillPoly(img, [pts], (40, 90, 220), lineType=cv2.LINE_AA)
    cv2.circle(img, px(goal), max(3, int(0.3 * scale)), (40, 170, 60), 2, cv2.LINE_AA)
    if len(trace) > 1:
        pts = np.array([px(p) for p in trace], dtype=np.int32)
        cv2.polylines(img, [pts], False, (220, 120, 40), 2, cv2.LINE_AA)
    if len(trace):
        cv2.circle(img, px(trace[-1]), max(2, int(radius * scale)), (200, 30, 30), -1,
                   cv2.LINE_AA)
    return np.ascontiguousarray(img)
