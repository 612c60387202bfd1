"""Ego-centred, heading-aligned observations, PPUU style.

An image is ``[H, W, C]`` uint8 with H = 117 rows along the ego's heading (row 0 is
``H/2 * res`` metres ahead) and W = 24 columns across it (column 0 is on the ego's left),
at ``res`` = 0.617 m per pixel. Channels: R = lane markings and road edges, G = other
cars as filled rectangles of their true size, B = the ego car, optional 4th = off-road.
Shapes are drawn at ``scale`` (4x) with OpenCV's sub-pixel polygon fill and averaged
down (``INTER_AREA``), so edges are anti-aliased (a pixel holds its covered fraction).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from worldplan.envs.highway.road import Road

SHIFT = 4  # OpenCV sub-pixel bits


@dataclass(frozen=True)
class View:
    height: int = 117
    width: int = 24
    res: float = 0.617  # m per pixel
    scale: int = 4
    offroad: bool = False
    line_width: float = 0.45  # m, lane marking thickness

    @property
    def channels(self) -> int:
        return 4 if self.offroad else 3

    def pixel_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Forward and left offsets (m) of every pixel centre: two ``[H, W]`` arrays."""
        rows = np.arange(self.height) + 0.5
        cols = np.arange(self.width) + 0.5
        fwd = (self.height / 2 - rows) * self.res
        left = (self.width / 2 - cols) * self.res
        return np.broadcast_to(fwd[:, None], (self.height, self.width)), \
            np.broadcast_to(left[None, :], (self.height, self.width))


DEFAULT_VIEW = View()


def car_corners(pos: np.ndarray, heading: np.ndarray, length: np.ndarray,
                width: np.ndarray) -> np.ndarray:
    """Corners ``[N, 4, 2]`` (m) of cars given centres ``[N, 2]``, unit headings ``[N, 2]``,
    lengths and widths ``[N]``."""
    f = heading * (length / 2)[:, None]
    side = np.stack([-heading[:, 1], heading[:, 0]], 1) * (width / 2)[:, None]
    return np.stack([pos + f + side, pos + f - side, pos - f - side, pos - f + side], 1)


def _to_canvas(points: np.ndarray, ego_pos: np.ndarray, ego_heading: np.ndarray,
               view: View) -> np.ndarray:
    """World points ``[E, ..., 2]`` -> fixed-point canvas coordinates (col, row) of each
    ego's view, ``[E, ..., 2]`` int32; ego_pos and ego_heading are ``[E, 2]``."""
    extra = (1,) * (points.ndim - 2)
    p = ego_pos.reshape(len(ego_pos), *extra, 2)
    d = ego_heading.reshape(len(ego_heading), *extra, 2)
    rel = points - p
    fwd = rel[..., 0] * d[..., 0] + rel[..., 1] * d[..., 1]
    left = -rel[..., 0] * d[..., 1] + rel[..., 1] * d[..., 0]
    k = view.scale / view.res
    col = (view.width / 2 * view.res - left) * k - 0.5
    row = (view.height / 2 * view.res - fwd) * k - 0.5
    return np.round(np.stack([col, row], -1) * (1 << SHIFT)).astype(np.int32)


def render_views(ego_pos: np.ndarray, ego_heading: np.ndarray, ego_size: np.ndarray,
                 car_pos: np.ndarray, car_heading: np.ndarray, car_size: np.ndarray,
                 ego_index: np.ndarray, road: Road, view: View = DEFAULT_VIEW) -> np.ndarray:
    """Observations ``[E, H, W, C]`` uint8 for E egos among N cars.

    ego_pos/ego_heading ``[E, 2]``, ego_size ``[E, 2]`` (length, width); car_* ``[N, 2]``
    likewise; ``ego_index[e]`` is the ego's own row in the car arrays (``-1`` if it is
    not among them), left out of the G channel. All geometry is transformed for all
    egos at once (numpy); each ego then costs one polygon fill and one area
    down-sampling per channel (OpenCV).
    """
    ego_pos = np.asarray(ego_pos, np.float64).reshape(-1, 2)
    car_pos = np.asarray(car_pos, np.float64).reshape(-1, 2)
    n = len(car_pos)
    reach = view_reach(view)
    near = (np.abs(car_pos[None, :, :] - ego_pos[:, None, :]).max(-1) < reach)  # [E, N]
    ego_index = np.asarray(ego_index).reshape(-1)
    own = (ego_index >= 0) & (ego_index < n)
    near[np.flatnonzero(own), ego_index[own]] = False
    pairs_e, pairs_n = np.nonzero(near)
    return render_pairs(ego_pos, ego_heading, ego_size, pairs_e, car_pos[pairs_n],
                        np.asarray(car_heading, np.float64).reshape(-1, 2)[pairs_n],
                        np.asarray(car_size, np.float64).reshape(-1, 2)[pairs_n], road, view)


def view_reach(view: View) -> float:
    """Half the view's diagonal plus a car: cars farther than this (per axis) are unseen."""
    return float(np.hypot(view.height * view.res, view.width * view.res) / 2 + 4.0)


def render_pairs(ego_pos: np.ndarray, ego_heading: np.ndarray, ego_size: np.ndarray,
                 pair_ego: np.ndarray, car_pos: np.ndarray, car_heading: np.ndarray,
                 car_size: np.ndarray, road: Road, view: View = DEFAULT_VIEW) -> np.ndarray:
    """Observations ``[E, H, W, C]`` uint8 from (ego, car) pairs: car k (``car_pos[k]``,
    ``car_heading[k]``, ``car_size[k]``, all ``[K, 2]``) is drawn in the view of ego
    ``pair_ego[k]`` (sorted ascending). The egos may look at different scenes (e.g.
    different recording steps): only the pairs decide who sees what."""
    ego_pos = np.asarray(ego_pos, np.float64).reshape(-1, 2)
    ego_heading = np.asarray(ego_heading, np.float64).reshape(-1, 2)
    e_count = len(ego_pos)
    h4, w4 = view.height * view.scale, view.width * view.scale
    out = np.zeros((e_count, view.height, view.width, view.channels), np.uint8)
    if e_count == 0:
        return out
    # OpenCV's fill also covers pixels the outline touches (about half a canvas pixel
    # all round): shrink every rectangle by that much so areas come out true.
    pad = 0.85 * view.res / view.scale  # measured: mean area error < 1% on random cars
    esizes = np.maximum(np.asarray(ego_size, np.float64).reshape(-1, 2) - pad, 0.0)
    pair_ego = np.asarray(pair_ego, int).reshape(-1)
    n = len(pair_ego)
    reach = view_reach(view)
    if n:
        sizes = np.maximum(np.asarray(car_size, np.float64).reshape(-1, 2) - pad, 0.0)
        corners = car_corners(np.asarray(car_pos, np.float64), np.asarray(car_heading, np.float64),
                              sizes[:, 0], sizes[:, 1])
        car_px = _to_canvas(corners, ego_pos[pair_ego], ego_heading[pair_ego], view)
        bounds = np.searchsorted(pair_ego, np.arange(e_count + 1))
    ego_corners = car_corners(ego_pos, ego_heading, esizes[:, 0], esizes[:, 1])
    ego_px = _to_canvas(ego_corners, ego_pos, ego_heading, view)  # [E, 4, 2]
    # lane markings near each ego, as segments of +-reach metres along the road
    ys = np.arange(road.n_lanes + 1) * road.lane_width
    x0 = ego_pos[:, 0:1] - 2 * reach
    x1 = ego_pos[:, 0:1] + 2 * reach
    yy = np.tile(ys, (e_count, 1))
    segs = np.stack([np.stack([np.broadcast_to(x0, yy.shape), yy], -1),
                     np.stack([np.broadcast_to(x1, yy.shape), yy], -1)], 2)  # [E, L, 2, 2]
    line_px = _to_canvas(segs, ego_pos, ego_heading, view)
    lw = max(1, int(round(view.line_width / view.res * view.scale)))
    if view.offroad:
        poly = np.stack([np.concatenate([x0, np.zeros_like(x0)], 1),
                         np.concatenate([x1, np.zeros_like(x0)], 1),
                         np.concatenate([x1, np.full_like(x0, road.width)], 1),
                         np.concatenate([x0, np.full_like(x0, road.width)], 1)], 1)
        road_px = _to_canvas(poly, ego_pos, ego_heading, view)
    canvas = np.zeros((view.channels, h4, w4), np.uint8)
    size = (view.width, view.height)
    for e in range(e_count):
        canvas[:3] = 0
        cv2.polylines(canvas[0], list(line_px[e]), False, 255, lw, cv2.LINE_8, SHIFT)
        if n and bounds[e + 1] > bounds[e]:
            cv2.fillPoly(canvas[1], list(car_px[bounds[e]:bounds[e + 1]]), 255, cv2.LINE_8, SHIFT)
        cv2.fillPoly(canvas[2], [ego_px[e]], 255, cv2.LINE_8, SHIFT)
        if view.offroad:
            canvas[3] = 255
            cv2.fillPoly(canvas[3], [road_px[e]], 0, cv2.LINE_8, SHIFT)
        for c in range(view.channels):
            out[e, :, :, c] = cv2.resize(canvas[c], size, interpolation=cv2.INTER_AREA)
    return out


def render_scene(car_pos: np.ndarray, car_heading: np.ndarray, car_size: np.ndarray,
                 road: Road, highlight: np.ndarray | None = None, px_per_m: float = 4.0,
                 margin: float = 2.0) -> np.ndarray:
    """A top view of the whole road ``[H, W, 3]`` uint8 (x to the right, lane 0 at the
    bottom) for ``render()`` and videos; ``highlight`` (bool ``[N]``) cars are drawn blue."""
    w = int(road.length * px_per_m)
    h = int((road.width + 2 * margin) * px_per_m)
    img = np.full((h, w, 3), 40, np.uint8)

    def to_px(pts: np.ndarray) -> np.ndarray:
        col = pts[..., 0] * px_per_m
        row = h - (pts[..., 1] + margin) * px_per_m
        return np.round(np.stack([col, row], -1) * (1 << SHIFT)).astype(np.int32)

    edge = int(margin * px_per_m)
    cv2.rectangle(img, (0, edge), (w, h - edge), (90, 90, 90), -1)
    for k in range(road.n_lanes + 1):
        y = np.array([[0.0, k * road.lane_width], [road.length, k * road.lane_width]])
        cv2.polylines(img, [to_px(y)], False, (255, 255, 255), 1, cv2.LINE_AA, SHIFT)
    for x in (road.before, road.segment_end):
        seg = np.array([[x, 0.0], [x, road.width]])
        cv2.polylines(img, [to_px(seg)], False, (0, 200, 255), 1, cv2.LINE_AA, SHIFT)
    if len(car_pos):
        corners = car_corners(car_pos, car_heading, car_size[:, 0], car_size[:, 1])
        hl = np.zeros(len(car_pos), bool) if highlight is None else highlight
        if (~hl).any():
            cv2.fillPoly(img, list(to_px(corners[~hl])), (60, 200, 60), cv2.LINE_AA, SHIFT)
        if hl.any():
            cv2.fillPoly(img, list(to_px(corners[hl])), (230, 80, 40), cv2.LINE_AA, SHIFT)
    return img
