"""Learning curves of the learned-model MPC loop (``worldplan mujoco all``) on Reacher-v5 and
HalfCheetah-v5, against the mbrl-lib PETS figures we could find, in one JSON and one figure.

The runs themselves are ``worldplan mujoco all`` runs (minutes to tens of minutes on one CPU
core each); this script reads their ``metrics.json`` (``train.curve``: mean return of the
complete MPC episodes of each round against environment steps of data; ``evaluate``: the
final seeded evaluation) and lays them beside the quoted references::

    worldplan mujoco all --env Reacher-v5 --run runs/mujoco/reacher ...
    worldplan mujoco all --env HalfCheetah-v5 --run runs/mujoco/cheetah ...
    python benchmarks/bench_mujoco_curves.py --run Reacher-v5=runs/mujoco/reacher \\
        --run HalfCheetah-v5=runs/mujoco/cheetah

Every reference figure below is quoted with its source; none is read off a plot by eye.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# What mbrl-lib publishes about PETS on these tasks, quoted with where it comes from.
REFERENCES: dict[str, dict[str, Any]] = {
    "HalfCheetah-v5": {
        "config": {
            "source": "facebookresearch/mbrl-lib, mbrl/examples/conf/overrides/"
                      "pets_halfcheetah.yaml",
            "env": "pets_halfcheetah (mbrl-lib's port of the PETS paper's HalfCheetah: "
                   "reward = forward velocity - 0.1 |a|^2, 1,000-step episodes)",
            "num_steps": 300000, "trial_length": 1000, "planning_horizon": 30,
            "cem_population_size": 350, "cem_num_iters": 5, "cem_elite_ratio": 0.1,
            "num_epochs_train_model": 25, "freq_train_model": 1000,
        },
        "curve": {
            "source": "https://github.com/facebookresearch/mbrl-lib/issues/136 (a user's "
                      "results.csv of `python -m mbrl.examples.main algorithm=pets "
                      "overrides=pets_halfcheetah`, 2021-12-10, filed as '[Bug] PETS not "
                      "working'; the only numeric mbrl-lib PETS HalfCheetah curve found)",
            "caveat": "a user's single run reported as a bug, not a curve mbrl-lib "
                      "published; the mbrl-lib paper (Pineda et al. 2021, arXiv 2104.10159) "
                      "shows its PETS curves only as plots",
            "env_steps": [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000,
                          11000, 12000, 13000, 14000, 15000, 16000, 17000, 18000, 19000,
                          20000],
            "episode_reward": [-224.74, -216.56, -23.61, -226.04, 299.97, -424.24, -605.50,
                               -276.90, -570.01, -510.15, -521.22, -380.67, -401.07,
                               -342.89, -387.10, 271.65, -357.97, -144.49, -227.66,
                               -270.15],
        },
    },
    "Reacher-v5": {
        "config": {
            "source": "facebookresearch/mbrl-lib, mbrl/examples/conf/overrides/"
                      "pets_reacher.yaml",
            "env": "pets_reacher (the PETS paper's 7-DoF reacher, not gymnasium's 2-link "
                   "Reacher: different state, reward and episode length)",
            "num_steps": 15000, "trial_length": 1000, "planning_horizon": 15,
            "cem_population_size": 350, "cem_num_iters": 5, "cem_elite_ratio": 0.1,
            "num_epochs_train_model": 25, "freq_train_model": 250,
        },
        "curve": None,  # no numeric PETS Reacher curve was found (plots only)
    },
}


def load_run(path: Path) -> dict[str, Any]:
    """``{curve, evaluate, config}`` of a finished ``worldplan mujoco all`` run."""
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"no metrics.json in {path}; run `worldplan mujoco all` first")
    metrics = json.loads(metrics_path.read_text())
    if "train" not in metrics:
        raise ValueError(f"{path} has no train section: not a learned-model run")
    curve = [p for p in metrics["train"]["curve"] if math.isfinite(p["mean_return"])]
    return {"run": str(path), "curve": curve, "evaluate": metrics.get("evaluate"),
            "collect": metrics.get("collect")}


def figure(data: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(data)
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        ours = data[env]["ours"]
        steps = [p["env_steps"] for p in ours["curve"]]
        ax.plot(steps, [p["mean_return"] for p in ours["curve"]], "o-",
                label="ours: CEM-MPC + ensemble (mean of the round's episodes)")
        ev = ours.get("evaluate")
        if ev:
            ax.errorbar([ev["env_steps"]], [ev["mean_return"]], yerr=[ev["std_return"]],
                        fmt="s", color="C0", capsize=3,
                        label=f"ours: final evaluation ({ev['episodes']} episodes)")
        ref = data[env]["mbrl_lib"].get("curve")
        if ref:
            ax.plot(ref["env_steps"], ref["episode_reward"], "x--", color="C3",
                    label="mbrl-lib PETS (user run, issue #136)")
        else:
            ax.text(0.5, 0.05, "no numeric mbrl-lib PETS curve found\n(its PETS reacher is "
                    "a different 7-DoF task)", transform=ax.transAxes, ha="center",
                    fontsize=7, color="C3")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("episode return")
        ax.set_title(env)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="ENV=RUN_DIR",
                        help="a finished `worldplan mujoco all` run of ENV (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS / "mujoco_curves.json")
    args = parser.parse_args(argv)
    data: dict[str, dict[str, Any]] = {}
    for item in args.run:
        env, sep, path = item.partition("=")
        if not sep or not path:
            parser.error(f"--run takes ENV=RUN_DIR, got {item!r}")
        if env not in REFERENCES:
            parser.error(f"no mbrl-lib reference for {env!r}; choose from "
                         f"{', '.join(REFERENCES)}")
        data[env] = {"ours": load_run(Path(path)), "mbrl_lib": REFERENCES[env]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    figure(data, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return data


if __name__ == "__main__":
    main()
