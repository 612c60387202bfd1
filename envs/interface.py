"""The shared interface every task implements (see DESIGN.md, "The shared interface").

Tensors are batch-first float32: states ``[B, S]``, actions ``[B, A]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from worldplan.envs.maps import OccupancyGrid


@runtime_checkable
class TaskModel(Protocol):
    """The differentiable side of a task.

    ``step`` is the true dynamics where they are known in closed form; a task without
    them (dense traffic, gymnasium's MuJoCo tasks) raises ``NotImplementedError``.
    """

    state_dim: int
    action_dim: int
    action_low: torch.Tensor  # [A]
    action_high: torch.Tensor  # [A]

    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``[B, S], [B, A] -> [B, S]``, differentiable."""
        ...

    def cost(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Running cost ``[B, S], [B, A] -> [B]``, differentiable."""
        ...

    def terminal_cost(self, state: torch.Tensor) -> torch.Tensor:
        """Terminal cost ``[B, S] -> [B]``, differentiable."""
        ...

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """Measurement ``[B, S] -> [B, M]`` (noise-free; see ``measurement_noise``)."""
        ...

    @property
    def process_noise(self) -> torch.Tensor:
        """Process noise covariance ``[S, S]``."""
        ...

    @property
    def measurement_noise(self) -> torch.Tensor:
        """Measurement noise covariance ``[M, M]``."""
        ...

    @property
    def occupancy(self) -> OccupancyGrid | None:
        """The map for path planners, or ``None`` for a task without one."""
        ...


def check_batch(name: str, tensor: torch.Tensor, width: int) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``tensor`` is ``[B, width]`` and finite."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != 2 or tensor.shape[1] != width:
        raise ValueError(f"{name} must have shape [B, {width}], got {list(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or inf")
