"""Model-predictive control for any ``dynamics`` and ``cost`` callables, batched over problems.

``GradientMPC`` (adjoint / backprop through the dynamics), ``CEM`` (with iCEM), ``MPPI``,
``LQR`` and ``ILQR`` share the :class:`Planner` interface: ``plan(state [B, S]) -> [B, T, A]``,
``act(state [B, S]) -> [B, A]`` (receding horizon with warm start) and ``reset()``.
See docs/mpc.md.
"""

from worldplan.planners.mpc.base import Planner, as_bounds
from worldplan.planners.mpc.controller import EpisodeResult, RecedingHorizonController
from worldplan.planners.mpc.gradient import GradientMPC
from worldplan.planners.mpc.lqr import ILQR, LQR, batch_jacobian, dare, dlqr, linearize
from worldplan.planners.mpc.sampling import CEM, MPPI, colored_noise

__all__ = ["CEM", "ILQR", "LQR", "MPPI", "EpisodeResult", "GradientMPC", "Planner",
           "RecedingHorizonController", "as_bounds",
           "batch_jacobian", "colored_noise", "dare", "dlqr", "linearize"]
