"""OpenCV drawing of the yard, the dock and the truck (RGB uint8 frames)."""

from __future__ import annotations

import cv2
import numpy as np

from worldplan.envs.truck.kinematics import TruckParams, cab_front, trailer_rear

WIDTH = 2.5  # half-width of cab and trailer, yard units


class YardCanvas:
    """Maps yard coordinates to pixels; x to the right (wall on the left), y up."""

    def __init__(self, p: TruckParams, scale: float = 5.0, margin: float = 10.0) -> None:
        self.p, self.scale, self.margin = p, scale, margin
        self.width = int((p.yard_x[1] - p.yard_x[0] + 2 * margin) * scale)
        self.height = int((p.yard_y[1] - p.yard_y[0] + 2 * margin) * scale)

    def px(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64)
        u = (pts[..., 0] - self.p.yard_x[0] + self.margin) * self.scale
        v = (self.p.yard_y[1] + self.margin - pts[..., 1]) * self.scale
        return np.round(np.stack([u, v], -1) * 4).astype(np.int32)  # 2 fractional bits

    def background(self) -> np.ndarray:
        img = np.full((self.height, self.width, 3), 245, np.uint8)
        corners = self.px(np.array([[self.p.yard_x[0], self.p.yard_y[0]],
                                    [self.p.yard_x[1], self.p.yard_y[1]]]))
        cv2.rectangle(img, tuple(corners[0]), tuple(corners[1]), (200, 200, 200), 1,
                      cv2.LINE_AA, shift=2)
        wall = self.px(np.array([[0.0, self.p.yard_y[0]], [0.0, self.p.yard_y[1]]]))
        cv2.line(img, tuple(wall[0]), tuple(wall[1]), (60, 60, 60), 3, cv2.LINE_AA, shift=2)
        dock = self.px(np.array([[0.0, 0.0]]))[0]
        radius = int(4 * 1.5 * self.scale)
        cv2.circle(img, tuple(dock), radius, (0, 160, 0), -1, cv2.LINE_AA, shift=2)
        return img

    def _box(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = b - a
        n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9) * WIDTH
        return self.px(np.stack([a + n, b + n, b - n, a - n]))

    def draw_truck(self, img: np.ndarray, state: np.ndarray, faded: bool = False) -> None:
        rear, hitch, front = trailer_rear(state, self.p), state[:2], cab_front(state, self.p)
        trailer_colour, cab_colour = ((170, 190, 230), (230, 170, 170)) if faded else \
            ((40, 80, 200), (200, 50, 50))
        thickness = 1 if faded else -1
        cv2.polylines(img, [self._box(rear, hitch)], True, trailer_colour, 1, cv2.LINE_AA, 2)
        if not faded:
            cv2.fillPoly(img, [self._box(rear, hitch)], trailer_colour, cv2.LINE_AA, 2)
        cv2.polylines(img, [self._box(hitch, front)], True, cab_colour, 1, cv2.LINE_AA, 2)
        if thickness < 0:
            cv2.fillPoly(img, [self._box(hitch, front)], cab_colour, cv2.LINE_AA, 2)

    def draw_path(self, img: np.ndarray, points: np.ndarray, colour=(90, 90, 90)) -> None:
        if len(points) > 1:
            cv2.polylines(img, [self.px(points)], False, colour, 1, cv2.LINE_AA, 2)


def render_frame(state: np.ndarray, p: TruckParams, trace: np.ndarray | None = None) -> np.ndarray:
    """One RGB frame ``[H, W, 3]`` of the truck at ``state`` with an optional rear trace."""
    canvas = YardCanvas(p)
    img = canvas.background()
    if trace is not None:
        canvas.draw_path(img, trace)
    canvas.draw_truck(img, state)
    return img
