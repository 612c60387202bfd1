"""Shared helpers: argument conversion, validation and the backend (numpy or torch) rule.

Backend rule used by every filter: if the measurements are a ``torch.Tensor`` the
computation runs in that tensor's dtype and device and returns tensors; anything else
(numpy arrays, masked arrays, lists) runs in float64 on the CPU and returns numpy arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

ArrayLike = Any  # numpy array, torch tensor, nested list or scalar
F = TypeVar("F", bound=Callable[..., Any])


def to_tensor(
    name: str,
    value: ArrayLike,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    allow_nan: bool = False,
) -> torch.Tensor:
    """Convert ``value`` to a tensor, with a ``ValueError`` naming ``name`` on bad input."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach() if not value.requires_grad else value
        tensor = tensor.to(dtype=dtype, device=device)
    else:
        if isinstance(value, np.ma.MaskedArray):
            value = value.filled(np.nan)
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} must be an array or tensor of numbers, got {type(value).__name__}"
            ) from None
        tensor = torch.as_tensor(array, dtype=dtype, device=device)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    bad = ~torch.isfinite(tensor)
    if allow_nan:
        bad = bad & ~torch.isnan(tensor)
    if bool(bad.any()):
        what = "inf" if allow_nan else "NaN or inf"
        raise ValueError(f"{name} contains {what}")
    return tensor


def check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``tensor.shape == shape``."""
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")


def check_covariance(name: str, cov: torch.Tensor, dim: int, allow_batch: bool = False) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``cov`` is a symmetric PSD ``[dim, dim]``
    matrix (or ``[B, dim, dim]`` when ``allow_batch``)."""
    ok_shape = cov.shape[-2:] == (dim, dim) and (
        cov.ndim == 2 or (allow_batch and cov.ndim == 3)
    )
    if not ok_shape:
        expect = f"[{dim}, {dim}]" + (f" or [B, {dim}, {dim}]" if allow_batch else "")
        raise ValueError(f"{name} must have shape {expect}, got {list(cov.shape)}")
    c = cov.detach().to(torch.float64)
    scale = float(c.abs().max()) if c.numel() else 0.0
    if not torch.allclose(c, c.mT, rtol=1e-7, atol=1e-9 * max(scale, 1.0)):
        raise ValueError(f"{name} is not symmetric")
    eig = torch.linalg.eigvalsh(0.5 * (c + c.mT))
    if bool((eig < -1e-9 * max(scale, 1.0)).any()):
        raise ValueError(
            f"{name} is not positive semi-definite (smallest eigenvalue {float(eig.min()):.3g})"
        )


def symmetrise(p: torch.Tensor) -> torch.Tensor:
    """``(P + P^T) / 2`` over the last two dimensions."""
    return 0.5 * (p + p.mT)


def prepare_measurements(
    measurements: ArrayLike, obs_dim: int | None, mask: ArrayLike | None = None
) -> tuple[torch.Tensor, torch.Tensor, bool, bool]:
    """Convert measurements to ``[B, T, M]`` with a ``[B, T]`` missing mask.

    A row with any NaN (or any masked entry of a ``np.ma.MaskedArray``, or ``mask`` True)
    is missing, as in pykalman. Returns ``(z, missing, squeeze, as_numpy)``; missing rows
    of ``z`` are zero-filled.
    """
    as_numpy = not isinstance(measurements, torch.Tensor)
    missing_from_ma = None
    if isinstance(measurements, np.ma.MaskedArray):
        missing_from_ma = np.ma.getmaskarray(measurements)
    if as_numpy:
        z = to_tensor("measurements", measurements, allow_nan=True)
    else:
        dtype = measurements.dtype if measurements.is_floating_point() else torch.float64
        z = to_tensor("measurements", measurements, dtype, measurements.device, allow_nan=True)
    if z.ndim not in (2, 3):
        raise ValueError(
            f"measurements must have shape [T, M] or [B, T, M], got {list(z.shape)}"
        )
    squeeze = z.ndim == 2
    if squeeze:
        z = z.unsqueeze(0)
    if obs_dim is not None and z.shape[-1] != obs_dim:
        raise ValueError(
            f"measurements have {z.shape[-1]} components per row, the model observes {obs_dim}"
        )
    if z.shape[1] < 1:
        raise ValueError("measurements must contain at least one time step")
    missing = torch.isnan(z).any(-1)
    if missing_from_ma is not None:
        extra = torch.as_tensor(missing_from_ma, device=z.device).reshape(z.shape).any(-1)
        missing = missing | extra
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        m = m.to(device=z.device, dtype=torch.bool)
        if m.shape == z.shape or (squeeze and m.shape == z.shape[1:]):
            m = m.reshape(z.shape).any(-1)
        elif m.shape == z.shape[:2] or (squeeze and m.shape == z.shape[1:2]):
            m = m.reshape(z.shape[:2])
        else:
            raise ValueError(
                f"mask must have shape [T], [B, T] or the measurements' shape, got {list(m.shape)}"
            )
        missing = missing | m
    if bool(missing.any()):
        z = z.masked_fill(missing.unsqueeze(-1), 0.0)
    return z, missing, squeeze, as_numpy


def finish(x: torch.Tensor, squeeze: bool, as_numpy: bool) -> Any:
    """Drop the batch dimension when the input had none; convert to numpy when asked."""
    if squeeze:
        x = x[0]
    if as_numpy:
        return x.detach().cpu().numpy()
    return x


def prepare_controls(
    controls: ArrayLike | None, batch: int, steps: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Controls ``[T-1, U]``/``[T, U]`` or ``[B, T-1, U]``/``[B, T, U]`` -> ``[B, T-1, U]``.

    ``controls[:, t]`` drives the transition from step ``t`` to ``t + 1``.
    """
    if controls is None:
        return None
    u = to_tensor("controls", controls, dtype, device)
    if u.ndim == 2:
        u = u.unsqueeze(0).expand(batch, -1, -1)
    if u.ndim != 3 or u.shape[0] != batch or u.shape[1] not in (steps - 1, steps):
        raise ValueError(
            f"controls must have shape [T-1, U] or [B, T-1, U] (T={steps}, B={batch}), "
            f"got {list(u.shape)}"
        )
    return u[:, : steps - 1]


def single_threaded(fn: F) -> F:
    """Run ``fn`` with one intra-op torch thread, restoring the setting afterwards.

    The filters do many tiny batched factorisations per time step; on a loaded machine
    MKL/OpenMP thread hand-offs cost milliseconds per call where one thread takes
    microseconds (measured: ``cholesky_ex`` on ``[1, 2, 2]`` 5 ms vs 4 us).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = torch.get_num_threads()
        if before == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper  # type: ignore[return-value]
