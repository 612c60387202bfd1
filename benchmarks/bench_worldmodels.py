"""World-model benchmark (CPU): training throughput at batch 64 for the vector and the
image model, and the latency of a 30-step rollout with 10 MC-dropout samples at batch 6.

    python benchmarks/bench_worldmodels.py [--quick] [--only mc] [--repeats N]

The peer is facebookresearch/mbrl-lib (PyPI ``mbrl`` 0.2.0, the PETS ``GaussianMLP``
ensemble). Its package pins gymnasium 0.26 and hydra 1.0, which would break this
environment, so the benchmark fetches the wheel with ``pip download --no-deps`` into
a temporary folder and imports only ``mbrl.models`` (hydra/omegaconf/termcolor are
used there at import time only and are stubbed). Without network the peer rows say so.
Timings are the best of a few repeats (the machine is shared); the peer runs side by
side in this process, interleaved, and the training rows also give the median over the
repeats of each pair's CPU-time ratio (steadier than best-of wall times when the load
is high). Prints a table and writes benchmarks/results/worldmodels.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worldplan.checkpoint import atomic_write_text  # noqa: E402
from worldplan.worldmodels import (  # noqa: E402
    DeterministicModel,
    TrainConfig,
    load_dataset,
    train_model,
    write_dataset,
)
from worldplan.worldmodels.ensemble import Ensemble  # noqa: E402
from worldplan.worldmodels.images import ImageModel  # noqa: E402
from worldplan.worldmodels.training import clip_gradients, make_optimizer  # noqa: E402
from worldplan.worldmodels.uncertainty import mc_uncertainty  # noqa: E402

PEER_DIR = Path(tempfile.gettempdir()) / "worldplan_bench_peer"
S, A, HIDDEN = 4, 1, 128
IMAGE = (3, 117, 24)


def _loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def best_of(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


PAIR_CPU_RATIOS: list[float] = []  # the last paired() call's per-pair CPU-time ratios


def paired(ours: Callable[[], None], peer: Callable[[], None] | None,
           repeats: int) -> tuple[float, float | None]:
    """Best-of wall times of two callables run alternately (the load on a shared machine
    changes by the second, so side by side means interleaved). Leaves in
    ``PAIR_CPU_RATIOS`` each pair's CPU-time ratio peer / ours (this process's CPU time,
    which a busy machine disturbs less than the wall clock)."""
    t_ours, t_peer = [], []
    PAIR_CPU_RATIOS.clear()
    for _ in range(repeats):
        c0 = time.process_time()
        t_ours.append(best_of(ours, 1))
        c1 = time.process_time()
        if peer is not None:
            t_peer.append(best_of(peer, 1))
            PAIR_CPU_RATIOS.append((time.process_time() - c1) / max(c1 - c0, 1e-9))
    return min(t_ours), (min(t_peer) if t_peer else None)


# --------------------------------------------------------------------------- the peer
def load_mbrl() -> types.ModuleType | None:
    """``mbrl.models`` from the PyPI wheel (downloaded once, never installed)."""
    wheel_dir = PEER_DIR / "mbrl"
    if not (wheel_dir / "mbrl").is_dir():
        try:
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run([sys.executable, "-m", "pip", "download", "mbrl==0.2.0",
                                "--no-deps", "-q", "-d", tmp], check=True, timeout=120,
                               capture_output=True)
                wheel = next(Path(tmp).glob("mbrl-*.whl"))
                zipfile.ZipFile(wheel).extractall(wheel_dir)
        except Exception as exc:  # no network, no pip
            print(f"peer mbrl-lib unavailable: {exc.__class__.__name__}")
            return None
    for name in ("hydra", "hydra.utils", "omegaconf", "termcolor"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["hydra"].utils = sys.modules["hydra.utils"]
    sys.modules["omegaconf"].DictConfig = dict
    sys.modules["omegaconf"].ListConfig = list
    sys.modules["omegaconf"].OmegaConf = object
    sys.modules["termcolor"].colored = lambda s, *a, **k: s
    sys.path.insert(0, str(wheel_dir))
    try:
        import mbrl.models as models
    except Exception as exc:
        print(f"peer mbrl-lib failed to import: {exc!r}")
        return None
    return models


# --------------------------------------------------------------------------- helpers
def vector_dataset(root: Path, episodes: int = 60, T: int = 50) -> Path:
    rng = np.random.default_rng(0)
    eps = []
    for _ in range(episodes):
        s = np.zeros((T + 1, S), np.float32)
        s[0] = rng.normal(size=S)
        a = rng.uniform(-1, 1, (T, A)).astype(np.float32)
        for t in range(T):
            s[t + 1] = s[t] + 0.1 * np.concatenate([np.cos(s[t, 2:]), np.sin(s[t, :2]) * a[t]])
        eps.append({"states": s, "actions": a})
    return write_dataset(root / "vector", eps, task="bench", dt=0.1, overwrite=True)


def image_dataset(root: Path, episodes: int = 6, T: int = 40) -> Path:
    rng = np.random.default_rng(0)
    eps = []
    for _ in range(episodes):
        s = rng.normal(size=(T + 1, S)).astype(np.float32)
        a = rng.uniform(-1, 1, (T, 2)).astype(np.float32)
        img = rng.integers(0, 255, (T + 1, *IMAGE), dtype=np.uint8)
        eps.append({"states": s, "actions": a, "images": img})
    return write_dataset(root / "image", eps, task="bench", dt=0.1, overwrite=True)


def step_loop(model: torch.nn.Module, batch: dict, steps: int,
              fused: bool = False) -> Callable[[], None]:
    """``steps`` Adam steps on one in-memory batch (forward, backward, clip, step), with
    ``train_model``'s optimiser on one process (the flat foreach Adam; ``fused``:
    ``TrainConfig.fused_adam``)."""
    params = list(model.parameters())
    opt = make_optimizer(params, lr=1e-4, fused=fused, flat=True)
    model.train()

    def run() -> None:
        for _ in range(steps):
            loss = model(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(params, 1.0, opt)
            opt.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--repeats", type=int, default=0,
                        help="interleaved repeats of the training rows against the peer "
                             "(default 3, 2 with --quick)")
    parser.add_argument("--only", choices=("mc",),
                        help="mc: only the MC-dropout rollout rows (writes no JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    load_start = _loadavg()
    steps, repeats = (20, 2) if args.quick else (100, 3)
    if args.repeats < 0:
        raise ValueError(f"--repeats must be >= 0, got {args.repeats}")
    train_repeats = args.repeats or repeats
    img_steps = 3 if args.quick else 10
    rows: list[dict] = []
    mbrl = load_mbrl()
    tmp = Path(tempfile.mkdtemp(prefix="bench_wm_"))

    # -- training throughput, vector model -----------------------------------------
    ds = load_dataset(vector_dataset(tmp))
    batch64 = ds.windows("train", 1, 1).get_batch(np.arange(64))
    det = DeterministicModel(S, A, hidden=HIDDEN, layers=2)
    det.set_normalizer(ds.stats)
    ens = Ensemble(S, A, k=5, hidden=HIDDEN, layers=2)
    ens.set_normalizer(ds.stats)
    x = torch.cat([batch64["context"][:, 0], batch64["actions"][:, 0]], -1)
    y = batch64["targets"][:, 0] - batch64["context"][:, 0]

    def peer_trainer(k: int) -> Callable[[], None] | None:
        if mbrl is None:
            return None
        peer = mbrl.GaussianMLP(in_size=S + A, out_size=S, device="cpu", num_layers=3,
                                ensemble_size=k, hid_size=HIDDEN, deterministic=True)
        opt = torch.optim.Adam(peer.parameters(), lr=1e-4)
        xk = x[None].expand(k, -1, -1).contiguous() if k > 1 else x
        yk = y[None].expand(k, -1, -1).contiguous() if k > 1 else y

        def run() -> None:
            for _ in range(steps):
                peer.update(xk, opt, target=yk)

        return run

    if args.only is None:  # training throughput (skipped by --only mc)
        for name, model, k, fused in (
                ("train vector model (step loop), samples/s", det, 1, False),
                ("... same, fused_adam=True, samples/s", det, 1, True),
                ("train ensemble K=5, samples/s", ens, 5, False),
                ("... same, fused_adam=True, samples/s", ens, 5, True)):
            t_ours, t_peer = paired(step_loop(model, batch64, steps, fused), peer_trainer(k),
                                    train_repeats)
            rows.append({"what": name, "ours": 64 * steps / t_ours,
                         "peer": 64 * steps / t_peer if t_peer else None,
                         "median_pair_cpu_ratio": (float(np.median(PAIR_CPU_RATIOS))
                                                   if PAIR_CPU_RATIOS else None),
                         "peer_name": f"mbrl GaussianMLP (ensemble_size={k})",
                         "note": f"MLP {HIDDEN} wide, 3 hidden layers, S={S}, A={A}, batch 64"})
        cfg = TrainConfig(epochs=1, steps=steps * 2, batch_size=64, val_windows=64)
        h = train_model(DeterministicModel(S, A, hidden=HIDDEN), ds, cfg, progress=False)
        rows.append({"what": "train vector model (train_model: data, val, all), samples/s",
                     "ours": h["samples_per_s"]})

    # -- training throughput, image model ----------------------------------------------
    ids = load_dataset(image_dataset(tmp))
    if args.only is None:
        for ncond in (4, 20):
            if args.quick and ncond == 20:
                continue
            ib = ids.windows("train", ncond, 1).get_batch(np.arange(64))
            im = ImageModel(S, 2, IMAGE, ncond=ncond, hidden=256)
            im.set_normalizer(ids.stats)
            t = best_of(step_loop(im, ib, img_steps), max(1, repeats - 1))
            rows.append({"what": f"train image model ncond={ncond}, samples/s",
                         "ours": 64 * img_steps / t,
                         "note": f"{IMAGE[1]}x{IMAGE[2]}x{IMAGE[0]} frames + {S}-D state"})

    # -- 30-step rollout, 10 MC-dropout samples, batch 6 ---------------------------------
    det.eval()
    ctx = batch64["context"][:6]
    acts = torch.zeros(6, 30, A, requires_grad=True)

    def mc_vec() -> None:
        u = mc_uncertainty(det, ctx, acts, n=10)
        u.total(det).sum().backward()

    def mc_vec_nograd() -> None:
        with torch.no_grad():
            mc_uncertainty(det, ctx, acts, n=10)

    r = repeats * 3
    peer_roll = None
    if mbrl is not None:
        peer = mbrl.GaussianMLP(in_size=S + A, out_size=S, device="cpu", num_layers=3,
                                ensemble_size=1, hid_size=HIDDEN, deterministic=True)
        peer.eval()
        s0 = ctx[:, 0].repeat(10, 1)

        def peer_roll() -> None:
            with torch.no_grad():
                s = s0
                for _ in range(30):
                    s = s + peer(torch.cat([s, torch.zeros(60, A)], -1))[0]

    def plain_roll() -> None:
        with torch.no_grad():
            det.rollout(ctx.repeat(10, 1, 1), acts.detach().repeat(10, 1, 1))

    t_ours, t_peer = paired(mc_vec_nograd, peer_roll, r)
    rows.append({"what": "30-step rollout x10 MC samples, batch 6, vector (ms, no grad)",
                 "ours": 1e3 * t_ours, "peer": 1e3 * t_peer if t_peer else None,
                 "peer_name": "mbrl GaussianMLP forward (no dropout), 60 rows x 30 steps",
                 "lower_is_better": True})
    def mc_vec_traj() -> None:
        with torch.no_grad():
            mc_uncertainty(det, ctx, acts, n=10, masks="trajectory")

    t_ours, t_peer = paired(mc_vec_traj, peer_roll, r)
    rows.append({"what": "... same, masks fixed per trajectory (ms, no grad)",
                 "ours": 1e3 * t_ours, "peer": 1e3 * t_peer if t_peer else None,
                 "lower_is_better": True,
                 "peer_name": "mbrl GaussianMLP forward (no dropout), 60 rows x 30 steps"})
    t_ours, t_peer = paired(plain_roll, peer_roll, r)
    rows.append({"what": "... same, dropout off (60 rows x 30 steps, ms)", "ours": 1e3 * t_ours,
                 "peer": 1e3 * t_peer if t_peer else None, "lower_is_better": True,
                 "peer_name": "mbrl GaussianMLP forward, 60 rows x 30 steps"})
    # the MC-dropout overhead: each MC variant and the plain rollout interleaved
    for label, fn in (("fresh masks per step", mc_vec_nograd),
                      ("masks fixed per trajectory", mc_vec_traj)):
        t_mc, t_plain = paired(fn, plain_roll, r)
        rows.append({"what": f"MC rollout / plain rollout, {label} (x, target <= 1.5)",
                     "ours": t_mc / t_plain, "plain_ms": 1e3 * t_plain,
                     "mc_ms": 1e3 * t_mc, "lower_is_better": True})
    rows.append({"what": "... MC samples + backward to the actions (ms)",
                 "ours": 1e3 * best_of(mc_vec, r), "lower_is_better": True})
    for ncond in (4, 20):
        if args.quick and ncond == 20:
            continue
        ib = ids.windows("train", ncond, 1).get_batch(np.arange(6))
        im = ImageModel(S, 2, IMAGE, ncond=ncond, hidden=256).eval()
        im.set_normalizer(ids.stats)
        ia = torch.zeros(6, 30, 2)

        def mc_img(im=im, ib=ib, ia=ia) -> None:
            with torch.no_grad():
                mc_uncertainty(im, im.reset(ib["context"], ib["context_images"]), ia, n=10)

        rows.append({"what": f"30-step rollout x10 MC samples, batch 6, image ncond={ncond} "
                             "(ms, no grad)",
                     "ours": 1e3 * best_of(mc_img, max(1, repeats - 1)),
                     "lower_is_better": True})

    for row in rows:
        if row.get("peer"):
            better = row["peer"] / row["ours"] if row.get("lower_is_better") else (
                row["ours"] / row["peer"])
            row["ratio_ours_better"] = better
    print(f"\n{'benchmark':<72} {'ours':>10} {'peer':>10} {'ours/peer':>9} "
          f"{'median pair (CPU)':>17}")
    for row in rows:
        peer = f"{row['peer']:.1f}" if row.get("peer") else "-"
        ratio = f"{row['ratio_ours_better']:.2f}x" if row.get("ratio_ours_better") else "-"
        ours = f"{row['ours']:.2f}" if "(x," in row["what"] else f"{row['ours']:.1f}"
        extra = (f"   ({row['mc_ms']:.2f} / {row['plain_ms']:.2f} ms)" if "mc_ms" in row
                 else "")
        if row.get("median_pair_cpu_ratio"):
            extra = f" {row['median_pair_cpu_ratio']:>16.2f}x"
        print(f"{row['what']:<72} {ours:>10} {peer:>10} {ratio:>9}{extra}")
    print("(ours/peer > 1: ours faster; throughput in samples/s, latency in ms; median pair: "
          "the median over the interleaved repeats of peer / ours CPU time)")
    load = {"start": load_start, "end": _loadavg()}
    print(f"load average (1/5/15 min): {load['start']} at the start, {load['end']} at the end")
    out = {"machine": platform.platform(), "torch": torch.__version__, "threads": 1,
           "quick": args.quick, "train_repeats": train_repeats, "rows": rows,
           "load_average": load}
    if args.only is not None:
        return
    path = ROOT / "benchmarks" / "results" / "worldmodels.json"
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
