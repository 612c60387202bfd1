"""Offline trajectory data sets (docs/worldmodels.md).

A data set is a folder::

    manifest.json                  schema, task, dims, dt, counts, split, statistics, generator
    shard-00000-states.npy         [R, S]  float32  (R = sum over the shard's episodes of T+1)
    shard-00000-actions.npy        [Q, A]  float32  (Q = sum of T)
    shard-00000-images.npy         [R, C, H, W] uint8   (optional)
    shard-00000-costs.npy          [Q]     float32  (optional)

Episodes are contiguous inside a shard; ``actions[t]`` applied at ``states[t]`` gives
``states[t+1]``. Shards are loaded memory-mapped. The folder is written into a temporary
sibling and renamed, so a crash never leaves a half-written data set.

Length: the on-disk format (manifest, shards, splits, statistics), its writer, its reader
and the window sampler share the format's invariants, which are checked in one place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldplan.errors import UserError

log = logging.getLogger(__name__)

DATASET_SCHEMA = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
STAT_KEYS = ("state_mean", "state_std", "action_mean", "action_std", "delta_mean", "delta_std")


class DatasetError(UserError):
    """A data set folder that is missing, malformed or holds non-finite values."""


# ----------------------------------------------------------------------------- statistics
@dataclass
class NormStats:
    """Normalisation statistics (from the train split), each ``[S]`` or ``[A]`` float32.

    ``delta_*`` describe one-step state changes ``states[t+1] - states[t]``.
    """

    state_mean: np.ndarray
    state_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    delta_mean: np.ndarray
    delta_std: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(v) for v in getattr(self, k)] for k in STAT_KEYS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "statistics") -> NormStats:
        missing = [k for k in STAT_KEYS if k not in data]
        if missing:
            raise DatasetError(f"{where}: missing field(s) {', '.join(missing)}")
        values = {}
        for k in STAT_KEYS:
            arr = np.asarray(
                data[k].detach().cpu() if isinstance(data[k], torch.Tensor) else data[k],
                dtype=np.float32,
            )
            if arr.ndim != 1 or not np.isfinite(arr).all():
                raise DatasetError(f"{where}.{k} must be a finite 1-D list, got {arr.tolist()}")
            values[k] = arr
        for prefix in ("state", "action", "delta"):
            if values[f"{prefix}_mean"].shape != values[f"{prefix}_std"].shape:
                raise DatasetError(f"{where}: {prefix}_mean and {prefix}_std lengths differ")
        if values["state_mean"].shape != values["delta_mean"].shape:
            raise DatasetError(f"{where}: state_mean and delta_mean lengths differ")
        if (values["state_std"] <= 0).any() or (values["action_std"] <= 0).any() or (
            values["delta_std"] <= 0
        ).any():
            raise DatasetError(f"{where}: standard deviations must be positive")
        return cls(**values)

    @classmethod
    def identity(cls, state_dim: int, action_dim: int) -> NormStats:
        """Zero mean, unit std: what a model uses before ``set_normalizer``."""
        s0, s1 = np.zeros(state_dim, np.float32), np.ones(state_dim, np.float32)
        a0, a1 = np.zeros(action_dim, np.float32), np.ones(action_dim, np.float32)
        return cls(s0, s1, a0, a1, s0.copy(), s1.copy())


def _safe_std(x: np.ndarray) -> np.ndarray:
    """Standard deviation with constant dimensions mapped to 1 (never divide by ~0)."""
    std = x.std(axis=0).astype(np.float64)
    return np.where(std > 1e-8, std, 1.0).astype(np.float32)


class _Moments:
    """Streaming mean/variance over rows (float64 accumulators)."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.s = np.zeros(dim, np.float64)
        self.ss = np.zeros(dim, np.float64)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64)
        self.n += len(rows)
        self.s += rows.sum(0)
        self.ss += (rows**2).sum(0)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n == 0:
            raise DatasetError("cannot compute statistics from an empty train split")
        mean = self.s / self.n
        var = np.maximum(self.ss / self.n - mean**2, 0.0)
        std = np.sqrt(var)
        std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        return mean.astype(np.float32), std.astype(np.float32)


# ----------------------------------------------------------------------------- writing
def _check_episode(i: int, ep: Mapping[str, Any], image_key: str | None) -> dict[str, np.ndarray]:
    if not isinstance(ep, Mapping):
        raise TypeError(f"episodes[{i}] must be a dict, got {type(ep).__name__}")
    for key in ("states", "actions"):
        if key not in ep:
            raise ValueError(f"episodes[{i}] has no {key!r}")
    states = np.asarray(ep["states"], dtype=np.float32)
    actions = np.asarray(ep["actions"], dtype=np.float32)
    if states.ndim != 2 or actions.ndim != 2:
        raise ValueError(
            f"episodes[{i}]: states must be [T+1, S] and actions [T, A], got "
            f"{list(states.shape)} and {list(actions.shape)}"
        )
    if len(states) != len(actions) + 1 or len(actions) < 1:
        raise ValueError(
            f"episodes[{i}]: states must have one more row than actions (T+1 vs T, T >= 1), got "
            f"states {list(states.shape)} and actions {list(actions.shape)}"
        )
    for key, arr in (("states", states), ("actions", actions)):
        if not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0].tolist()
            raise ValueError(f"episodes[{i}].{key} contains NaN or inf at index {bad}")
    out = {"states": states, "actions": actions}
    if image_key is not None:
        if image_key not in ep:
            raise ValueError(f"episodes[{i}] has no image key {image_key!r}")
        images = np.asarray(ep[image_key])
        if images.dtype != np.uint8:
            raise TypeError(f"episodes[{i}].{image_key} must be uint8, got {images.dtype}")
        if images.ndim != 4 or len(images) != len(states):
            raise ValueError(
                f"episodes[{i}].{image_key} must be [T+1, C, H, W] = [{len(states)}, C, H, W], "
                f"got {list(images.shape)}"
            )
        out["images"] = images
    if "costs" in ep and ep["costs"] is not None:
        costs = np.asarray(ep["costs"], dtype=np.float32).reshape(-1)
        if len(costs) != len(actions):
            raise ValueError(
                f"episodes[{i}].costs must be [T] = [{len(actions)}], got {list(costs.shape)}"
            )
        out["costs"] = costs
    return out


def _split_episodes(
    n: int, fractions: Mapping[str, float], seed: int
) -> dict[str, list[int]]:
    """Shuffle episode ids with ``seed`` and cut them by ``fractions`` (train/val/test)."""
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ValueError(f"split fractions: unknown split(s) {unknown}; use {SPLITS}")
    fr = np.array([float(fractions.get(s, 0.0)) for s in SPLITS])
    if (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    order = np.random.default_rng(seed).permutation(n)
    counts = np.floor(fr * n).astype(int)
    # give the remainder to the splits with a positive fraction, train first
    for k in range(n - counts.sum()):
        positive = np.flatnonzero(fr > 0)
        counts[positive[k % len(positive)]] += 1
    if counts[0] == 0:
        raise ValueError(f"the train split is empty ({n} episodes, fractions {dict(fractions)})")
    # make sure a split with a positive fraction gets at least one episode when possible
    for j in (1, 2):
        if fr[j] > 0 and counts[j] == 0 and counts[0] > 1:
            counts[j] += 1
            counts[0] -= 1
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {s: sorted(order[bounds[j] : bounds[j + 1]].tolist()) for j, s in enumerate(SPLITS)}


def _check_split_ids(split_ids: Mapping[str, Sequence[int]], n: int) -> dict[str, list[int]]:
    """Explicit split ids: known split names, every episode in exactly one split, a
    non-empty train split."""
    unknown = sorted(set(split_ids) - set(SPLITS))
    if unknown:
        raise ValueError(f"split_ids: unknown split(s) {unknown}; use {SPLITS}")
    out = {s: sorted(int(i) for i in split_ids.get(s, [])) for s in SPLITS}
    flat = [i for s in SPLITS for i in out[s]]
    if sorted(flat) != list(range(n)):
        raise ValueError(f"split_ids must list each of the {n} episodes exactly once")
    if not out["train"]:
        raise ValueError("split_ids: the train split is empty")
    return out


split_episode_ids = _split_episodes  # public: the default random cut by fractions


def write_dataset(
    path: str | os.PathLike,
    episodes: Sequence[Mapping[str, Any]],
    *,
    task: str,
    dt: float,
    config: Mapping[str, Any] | None = None,
    seed: int = 0,
    image_key: str | None = None,
    split: Mapping[str, float] | None = None,
    split_seed: int | None = None,
    split_ids: Mapping[str, Sequence[int]] | None = None,
    episodes_per_shard: int = 256,
    overwrite: bool = False,
) -> Path:
    """Write ``episodes`` as a data set folder at ``path`` atomically; return the path.

    Each episode is a dict with ``states [T+1, S]`` and ``actions [T, A]`` (float32; T may
    differ between episodes), optionally ``costs [T]`` and images ``[T+1, C, H, W]`` uint8
    under ``image_key`` (default: ``"images"`` if the first episode has it). ``split`` gives
    the train/val/test fractions (default 0.8/0.1/0.1), cut by episode with ``split_seed``
    (default ``seed``); or ``split_ids`` names the episode ids of each split explicitly
    (e.g. to keep related episodes in one split). ``config``/``seed`` describe the
    generator and are stored verbatim.
    """
    path = Path(path)
    if not episodes:
        raise ValueError("episodes is empty: nothing to write")
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not dt > 0:
        raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")
    if episodes_per_shard < 1:
        raise ValueError(f"episodes_per_shard must be >= 1, got {episodes_per_shard}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"data set folder {path} already exists (pass overwrite=True)")
    if image_key is None and isinstance(episodes[0], Mapping) and "images" in episodes[0]:
        image_key = "images"
    eps = [_check_episode(i, ep, image_key) for i, ep in enumerate(episodes)]
    S, A = eps[0]["states"].shape[1], eps[0]["actions"].shape[1]
    image_shape = list(eps[0]["images"].shape[1:]) if image_key else None
    has_costs = "costs" in eps[0]
    for i, ep in enumerate(eps):
        if ep["states"].shape[1] != S or ep["actions"].shape[1] != A:
            raise ValueError(
                f"episodes[{i}] has state/action dims {ep['states'].shape[1]}/"
                f"{ep['actions'].shape[1]}, episodes[0] has {S}/{A}"
            )
        if image_key and list(ep["images"].shape[1:]) != image_shape:
            raise ValueError(
                f"episodes[{i}] images are {list(ep['images'].shape[1:])}, episodes[0] "
                f"{image_shape}"
            )
        if ("costs" in ep) != has_costs:
            raise ValueError(f"episodes[{i}]: costs must be given for all episodes or none")
    fractions = dict(split) if split is not None else {"train": 0.8, "val": 0.1, "test": 0.1}
    if split_ids is not None:
        if split is not None:
            raise ValueError("give split fractions or split_ids, not both")
        split_ids = _check_split_ids(split_ids, len(eps))
        fractions = {s: len(split_ids[s]) / len(eps) for s in SPLITS}
    else:
        split_ids = _split_episodes(len(eps), fractions,
                                    seed if split_seed is None else split_seed)

    # statistics from the train split
    sm, am, dm = _Moments(S), _Moments(A), _Moments(S)
    for i in split_ids["train"]:
        st = eps[i]["states"]
        sm.add(st)
        am.add(eps[i]["actions"])
        dm.add(st[1:] - st[:-1])
    stats = {}
    for name, mom in (("state", sm), ("action", am), ("delta", dm)):
        mean, std = mom.result()
        stats[f"{name}_mean"], stats[f"{name}_std"] = mean, std
    norm = NormStats(**stats)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        shards, index = [], []
        for k, start in enumerate(range(0, len(eps), episodes_per_shard)):
            name = f"shard-{k:05d}"
            chunk = eps[start : start + episodes_per_shard]
            lengths = [len(ep["actions"]) for ep in chunk]
            s_off = np.concatenate([[0], np.cumsum([n + 1 for n in lengths])])
            a_off = np.concatenate([[0], np.cumsum(lengths)])
            arrays = {
                "states": np.concatenate([ep["states"] for ep in chunk]),
                "actions": np.concatenate([ep["actions"] for ep in chunk]),
            }
            if image_key:
                arrays["images"] = np.concatenate([ep["images"] for ep in chunk])
            if has_costs:
                arrays["costs"] = np.concatenate([ep["costs"] for ep in chunk])
            for field_name, arr in arrays.items():
                _save_npy(tmp / f"{name}-{field_name}.npy", arr)
            shards.append({"name": name, "episodes": len(chunk), "files": sorted(arrays)})
            for j, n in enumerate(lengths):
                index.append([k, int(s_off[j]), int(a_off[j]), int(n)])
        manifest = {
            "schema": DATASET_SCHEMA,
            "kind": "worldplan-dataset",
            "task": str(task),
            "state_dim": int(S),
            "action_dim": int(A),
            "dt": float(dt),
            "image_shape": image_shape,
            "has_costs": has_costs,
            "count": {
                "episodes": len(eps),
                "transitions": int(sum(len(ep["actions"]) for ep in eps)),
                **{s: len(split_ids[s]) for s in SPLITS},
            },
            "split": {"fractions": fractions, "seed": int(seed if split_seed is None else
                                                          split_seed), **split_ids},
            "normalization": norm.to_dict(),
            "generator": {"config": _jsonable(config or {}), "seed": int(seed)},
            "shards": shards,
            "episodes": index,  # [shard, state_offset, action_offset, T]
        }
        _write_json(tmp / MANIFEST, manifest)
        _fsync_dir(tmp)
        if path.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old",
                                          dir=path.parent))
            os.replace(path, trash / "old")
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote data set %s: %d episodes, %d transitions", path, len(eps),
             manifest["count"]["transitions"])
    return path


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr))
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _jsonable(value: Any) -> Any:
    """Config values as JSON (dataclasses, numpy scalars/arrays, paths, tuples)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# ----------------------------------------------------------------------------- loading
def _field(manifest: Mapping[str, Any], key: str, types: type | tuple, where: Path) -> Any:
    if key not in manifest:
        raise DatasetError(f"{where}: missing field {key!r}")
    value = manifest[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise DatasetError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


class Dataset:
    """A loaded data set. Arrays are memory-mapped; nothing is read until used.

    Attributes: ``state_dim``, ``action_dim``, ``dt`` (s), ``task``, ``image_shape``
    (``(C, H, W)`` or ``None``), ``stats`` (:class:`NormStats` of the train split),
    ``manifest`` (the parsed JSON), ``split_ids`` (episode ids per split).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], shards: list[dict[str, np.ndarray]]):
        self.path = path
        self.manifest = manifest
        self.task: str = manifest["task"]
        self.state_dim: int = manifest["state_dim"]
        self.action_dim: int = manifest["action_dim"]
        self.dt: float = float(manifest["dt"])
        self.image_shape: tuple[int, int, int] | None = (
            tuple(manifest["image_shape"]) if manifest.get("image_shape") else None
        )
        self.has_costs: bool = bool(manifest.get("has_costs", False))
        self.stats = NormStats.from_dict(manifest["normalization"], f"{path / MANIFEST}:"
                                         "normalization")
        self._shards = shards
        self._index = np.asarray(manifest["episodes"], dtype=np.int64).reshape(-1, 4)
        self.split_ids = {s: list(manifest["split"].get(s, [])) for s in SPLITS}

    # -- episodes ----------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self._index)

    def episode_ids(self, split: str) -> list[int]:
        if split == "all":
            return list(range(self.num_episodes))
        if split not in self.split_ids:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS} or 'all'")
        return self.split_ids[split]

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i``: ``states [T+1, S]``, ``actions [T, A]``, and ``images``/``costs``
        if stored (views into the memory-mapped shards)."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range (0..{self.num_episodes - 1})")
        shard, s0, a0, n = (int(v) for v in self._index[i])
        arrays = self._shards[shard]
        out = {"states": arrays["states"][s0 : s0 + n + 1],
               "actions": arrays["actions"][a0 : a0 + n]}
        if "images" in arrays:
            out["images"] = arrays["images"][s0 : s0 + n + 1]
        if "costs" in arrays:
            out["costs"] = arrays["costs"][a0 : a0 + n]
        return out

    def episodes(self, split: str = "all") -> list[dict[str, np.ndarray]]:
        return [self.episode(i) for i in self.episode_ids(split)]

    def windows(
        self, split: str, ncond: int, npred: int, images: bool | None = None,
        episodes: Sequence[int] | None = None,
    ) -> WindowDataset:
        """All windows of ``ncond`` context states and ``npred`` predicted steps in
        ``split`` (only its episodes in ``episodes``, if given) as a
        ``torch.utils.data.Dataset`` (see :class:`WindowDataset`)."""
        return WindowDataset(self, split, ncond, npred, images, episodes)

    def __repr__(self) -> str:
        c = self.manifest["count"]
        return (f"Dataset({str(self.path)!r}, task={self.task!r}, S={self.state_dim}, "
                f"A={self.action_dim}, episodes={c['episodes']}, "
                f"train/val/test={c['train']}/{c['val']}/{c['test']})")


def load_dataset(path: str | os.PathLike, check_finite: bool = True) -> Dataset:
    """Open the data set folder at ``path`` (manifest validated, shards memory-mapped).

    Raises :class:`DatasetError` naming the file and field when the manifest or a shard is
    missing or malformed, and naming the shard and index when a value is NaN or inf
    (``check_finite`` scans the float shards once, in chunks).
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise DatasetError(f"data set folder not found: {path}")
    if not mpath.is_file():
        raise DatasetError(f"{mpath} not found: {path} is not a worldplan data set")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{mpath} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{mpath}: expected a JSON object")
    schema = _field(manifest, "schema", int, mpath)
    if schema != DATASET_SCHEMA:
        raise DatasetError(f"{mpath}: field 'schema' is {schema}, this worldplan reads "
                           f"{DATASET_SCHEMA}")
    _field(manifest, "task", str, mpath)
    S = _field(manifest, "state_dim", int, mpath)
    A = _field(manifest, "action_dim", int, mpath)
    if S < 1 or A < 1:
        raise DatasetError(f"{mpath}: fields 'state_dim'/'action_dim' must be >= 1, got {S}/{A}")
    dt = _field(manifest, "dt", (int, float), mpath)
    if not dt > 0:
        raise DatasetError(f"{mpath}: field 'dt' must be positive, got {dt}")
    _field(manifest, "count", dict, mpath)
    split = _field(manifest, "split", dict, mpath)
    _field(manifest, "normalization", dict, mpath)
    shards_meta = _field(manifest, "shards", list, mpath)
    index = _field(manifest, "episodes", list, mpath)
    image_shape = manifest.get("image_shape")
    if image_shape is not None and (
        not isinstance(image_shape, list) or len(image_shape) != 3
        or not all(isinstance(v, int) and v > 0 for v in image_shape)
    ):
        raise DatasetError(f"{mpath}: field 'image_shape' must be [C, H, W], got {image_shape}")
    try:
        idx = np.asarray(index, dtype=np.int64).reshape(-1, 4)
    except (ValueError, TypeError):
        raise DatasetError(f"{mpath}: field 'episodes' must be a list of "
                           "[shard, state_offset, action_offset, T]") from None
    if manifest["count"].get("episodes") != len(idx):
        raise DatasetError(f"{mpath}: field 'count.episodes' is {manifest['count'].get('episodes')}"
                           f" but 'episodes' lists {len(idx)}")
    for s in SPLITS:
        ids = split.get(s, [])
        if not isinstance(ids, list) or any(
            not isinstance(i, int) or not 0 <= i < len(idx) for i in ids
        ):
            raise DatasetError(f"{mpath}: field 'split.{s}' must list episode ids in "
                               f"0..{len(idx) - 1}")
    stats = NormStats.from_dict(manifest["normalization"], f"{mpath}: field 'normalization'")
    if len(stats.state_mean) != S or len(stats.action_mean) != A:
        raise DatasetError(f"{mpath}: field 'normalization' has state/action lengths "
                           f"{len(stats.state_mean)}/{len(stats.action_mean)}, expected {S}/{A}")

    shards: list[dict[str, np.ndarray]] = []
    for k, meta in enumerate(shards_meta):
        if not isinstance(meta, dict) or "name" not in meta or "files" not in meta:
            raise DatasetError(f"{mpath}: field 'shards[{k}]' must have 'name' and 'files'")
        rows = idx[idx[:, 0] == k]
        n_state_rows = int((rows[:, 3] + 1).sum())
        n_action_rows = int(rows[:, 3].sum())
        arrays: dict[str, np.ndarray] = {}
        expect = {
            "states": ((n_state_rows, S), np.float32),
            "actions": ((n_action_rows, A), np.float32),
            "costs": ((n_action_rows,), np.float32),
            "images": ((n_state_rows, *image_shape) if image_shape else None, np.uint8),
        }
        needed = {"states", "actions"} | ({"images"} if image_shape else set()) | (
            {"costs"} if manifest.get("has_costs") else set())
        files = set(meta["files"])
        if not needed <= files:
            raise DatasetError(f"{mpath}: field 'shards[{k}].files' lacks "
                               f"{sorted(needed - files)}")
        for field_name in sorted(files):
            if field_name not in expect:
                raise DatasetError(f"{mpath}: field 'shards[{k}].files' has unknown "
                                   f"{field_name!r}")
            fpath = path / f"{meta['name']}-{field_name}.npy"
            if not fpath.is_file():
                raise DatasetError(f"shard file {fpath} listed in {mpath} is missing")
            try:
                arr = np.load(fpath, mmap_mode="r", allow_pickle=False)
            except Exception as exc:
                raise DatasetError(f"shard file {fpath} is corrupt or truncated "
                                   f"({exc.__class__.__name__}: {exc})") from None
            shape, dtype = expect[field_name]
            if tuple(arr.shape) != tuple(shape) or arr.dtype != dtype:
                raise DatasetError(
                    f"shard file {fpath}: expected shape {list(shape)} dtype "
                    f"{np.dtype(dtype).name} from {mpath}, got {list(arr.shape)} {arr.dtype}"
                )
            if check_finite and arr.dtype.kind == "f":
                _check_finite(arr, fpath, field_name, rows)
            arrays[field_name] = arr
        shards.append(arrays)
    if idx.size and (idx[:, 0].min() < 0 or idx[:, 0].max() >= len(shards)):
        raise DatasetError(f"{mpath}: field 'episodes' refers to a shard that is not listed")
    return Dataset(path, manifest, shards)


def _check_finite(arr: np.ndarray, fpath: Path, field_name: str, rows: np.ndarray,
                  chunk: int = 1 << 16) -> None:
    """Raise naming the shard file, the row/column and the episode if a value is NaN/inf."""
    for start in range(0, len(arr), chunk):
        block = np.asarray(arr[start : start + chunk])
        ok = np.isfinite(block)
        if ok.all():
            continue
        bad = np.argwhere(~ok)[0]
        row = start + int(bad[0])
        where = f"index {[row, *bad[1:].tolist()]}"
        offset_col = 1 if field_name == "states" else 2
        extra = 1 if field_name == "states" else 0
        for ep_row in rows:
            off, n = int(ep_row[offset_col]), int(ep_row[3]) + extra
            if off <= row < off + n:
                where += f" (t={row - off} of an episode starting at row {off})"
                break
        value = block[tuple(bad)]
        raise DatasetError(f"shard file {fpath} holds a non-finite value ({value}) at {where}")


# ----------------------------------------------------------------------------- windows
class WindowDataset(torch.utils.data.Dataset):
    """Windows over one split, indexable by window id (works with any torch sampler,
    including ``DistributedSampler``).

    Item ``i`` is ``(context [ncond, S], actions [npred, A], targets [npred, S])`` float32
    tensors in raw units, plus ``(context_images [ncond, C, H, W], target_images
    [npred, C, H, W])`` uint8 when the data set has images and ``images`` is not False.
    For speed use :meth:`get_batch`, which gathers many windows with one fancy index.
    """

    def __init__(self, data: Dataset, split: str, ncond: int, npred: int,
                 images: bool | None = None, episodes: Sequence[int] | None = None) -> None:
        if not isinstance(ncond, int) or ncond < 1:
            raise ValueError(f"ncond must be an int >= 1, got {ncond!r}")
        if not isinstance(npred, int) or npred < 1:
            raise ValueError(f"npred must be an int >= 1, got {npred!r}")
        if images and data.image_shape is None:
            raise ValueError(f"images=True but data set {data.path} has no images")
        self.data = data
        self.split = split
        self.ncond, self.npred = ncond, npred
        self.images = data.image_shape is not None if images is None else bool(images)
        shard, srow, arow = [], [], []
        keep = None if episodes is None else {int(e) for e in episodes}
        for e in data.episode_ids(split):
            if keep is not None and e not in keep:
                continue
            k, s0, a0, n = (int(v) for v in data._index[e])
            # window at time t (last context state t): needs t-ncond+1 >= 0, t+npred <= n
            ts = np.arange(ncond - 1, n - npred + 1)
            if len(ts) == 0:
                continue
            shard.append(np.full(len(ts), k))
            srow.append(s0 + ts)
            arow.append(a0 + ts)
        if not shard:
            raise ValueError(
                f"split {split!r} of {data.path} has no window of ncond={ncond} + npred={npred} "
                "steps (episodes too short or the split is empty)"
            )
        self.shard = np.concatenate(shard)
        self.state_row = np.concatenate(srow)
        self.action_row = np.concatenate(arow)
        self._c = np.arange(-ncond + 1, 1)
        self._p = np.arange(npred)

    def __len__(self) -> int:
        return len(self.shard)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        batch = self.get_batch(np.array([int(i)]))
        keys = ["context", "actions", "targets"]
        if self.images:
            keys += ["context_images", "target_images"]
        return tuple(batch[k][0] for k in keys)

    def get_batch(self, indices: np.ndarray | Sequence[int] | torch.Tensor) -> dict[str,
                                                                                    torch.Tensor]:
        """Windows ``indices`` ``[N]`` as a dict of tensors: ``context [N, ncond, S]``,
        ``actions [N, npred, A]``, ``targets [N, npred, S]`` (float32, raw units) and, with
        images, ``context_images [N, ncond, C, H, W]``/``target_images [N, npred, C, H, W]``
        (uint8)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"window index out of range 0..{len(self) - 1}")
        N, S, A = len(idx), self.data.state_dim, self.data.action_dim
        ctx = np.empty((N, self.ncond, S), np.float32)
        act = np.empty((N, self.npred, A), np.float32)
        tgt = np.empty((N, self.npred, S), np.float32)
        if self.images:
            C, H, W = self.data.image_shape
            cimg = np.empty((N, self.ncond, C, H, W), np.uint8)
            timg = np.empty((N, self.npred, C, H, W), np.uint8)
        shards = self.shard[idx]
        for k in np.unique(shards):
            sel = np.flatnonzero(shards == k)
            arrays = self.data._shards[int(k)]
            srow = self.state_row[idx[sel]]
            arow = self.action_row[idx[sel]]
            crows = srow[:, None] + self._c[None, :]
            prows = srow[:, None] + 1 + self._p[None, :]
            ctx[sel] = arrays["states"][crows]
            tgt[sel] = arrays["states"][prows]
            act[sel] = arrays["actions"][arow[:, None] + self._p[None, :]]
            if self.images:
                cimg[sel] = arrays["images"][crows]
                timg[sel] = arrays["images"][prows]
        out = {"context": torch.from_numpy(ctx), "actions": torch.from_numpy(act),
               "targets": torch.from_numpy(tgt)}
        if self.images:
            out["context_images"] = torch.from_numpy(cimg)
            out["target_images"] = torch.from_numpy(timg)
        return out

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False):
        """Yield :meth:`get_batch` dicts over all windows (shuffled with ``seed``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = (np.random.default_rng(seed).permutation(len(self)) if shuffle
                 else np.arange(len(self)))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.get_batch(order[start : start + batch_size])
