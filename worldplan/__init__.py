"""worldplan: model-based planning and control with learned world models.

The installed distribution has one import name, ``worldplan``, with the subpackages
``worldplan.envs`` (tasks), ``worldplan.worldmodels``, ``worldplan.planners``,
``worldplan.filters`` and ``worldplan.experiments`` (the ``worldplan`` command). In the
source repository those subpackages are the top-level folders ``envs/``, ``worldmodels/``,
... beside this one (``pyproject.toml`` maps them into the package when it is built); see
docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

# In a source checkout (this folder beside pyproject.toml and the subpackage folders),
# let ``worldplan.envs`` & co. resolve to the repository's top-level folders, so tests and
# benchmarks run from the repository without installing. An installed wheel holds the
# subpackages inside this folder and never takes this branch.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "worldmodels").is_dir():
    __path__.append(str(_checkout))  # noqa: F821  (``__path__`` is set for every package)
