"""What a task offers the rest of worldplan, split by what a task has.

Every task model is a :class:`TaskModel` (sizes and action bounds). On top of that a task
implements only the parts it really has, each a runtime-checkable protocol:

* :class:`Dynamics`: ``step``, true dynamics in closed form (truck, navigation, Pendulum,
  MountainCar; not traffic or MuJoCo, whose dynamics a world model learns);
* :class:`Costs`: ``cost`` and ``terminal_cost`` of vector states (every task but the
  highway, whose cost is a function of its images: ``image_cost``);
* :class:`Sensor`: ``observe`` and the noise covariances (navigation's landmarks, the
  highway's tracker), what the filters need;
* :class:`Map`: ``occupancy``, what the path planners need (navigation).

A tool checks for the part it needs (``isinstance(task, Dynamics)``) and says which is
missing. Tensors are batch-first float32: states ``[B, S]``, actions ``[B, A]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from worldplan.envs.maps import OccupancyGrid


@runtime_checkable
class TaskModel(Protocol):
    """The sizes and action bounds every task has."""

    state_dim: int
    action_dim: int
    action_low: torch.Tensor  # [A]
    action_high: torch.Tensor  # [A]


@runtime_checkable
class Dynamics(Protocol):
    """True dynamics in closed form."""

    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``[B, S], [B, A] -> [B, S]``, differentiable."""
        ...


@runtime_checkable
class Costs(Protocol):
    """A cost of vector states and actions, for planners and policy learners."""

    def cost(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Running cost ``[B, S], [B, A] -> [B]``, differentiable."""
        ...

    def terminal_cost(self, state: torch.Tensor) -> torch.Tensor:
        """Terminal cost ``[B, S] -> [B]``, differentiable."""
        ...


@runtime_checkable
class Sensor(Protocol):
    """A measurement model with its noise, for the filters."""

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


@runtime_checkable
class Map(Protocol):
    """An occupancy map, for the path planners."""

    @property
    def occupancy(self) -> OccupancyGrid:
        ...


_PART_NAMES = {"Dynamics": "closed-form dynamics (step)",
               "Costs": "a cost of vector states (cost, terminal_cost)",
               "Sensor": "a sensor model (observe, process_noise, measurement_noise)",
               "Map": "an occupancy map (occupancy)"}


def require(task: object, *parts: type, needed_by: str) -> None:
    """Raise one ``TypeError`` naming what ``task`` lacks unless it implements every one of
    ``parts`` (:class:`Dynamics`, :class:`Costs`, :class:`Sensor`, :class:`Map`)."""
    missing = [p for p in parts if not isinstance(task, p)]
    if missing:
        what = " and ".join(_PART_NAMES.get(p.__name__, p.__name__) for p in missing)
        raise TypeError(f"{type(task).__name__} lacks {what}, which {needed_by} needs")


def check_batch(name: str, tensor: torch.Tensor, width: int) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``tensor`` is ``[B, width]`` and finite."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != 2 or tensor.shape[1] != width:
        raise ValueError(f"{name} must have shape [B, {width}], got {list(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or inf")
