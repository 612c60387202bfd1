"""Every Python example in README.md runs as printed, from an empty folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_an_example_per_part() -> None:
    imports = "\n".join(EXAMPLES)
    for part in ("worldmodels", "planners.mpc", "filters", "planners.path", "envs"):
        assert f"worldplan.{part}" in imports, f"README has no example importing {part}"


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", EXAMPLES[index]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"README example {index + 1} failed:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), "every example prints what it computed"
