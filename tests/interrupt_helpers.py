"""Run the ``worldplan`` CLI in a real subprocess, interrupt it inside a chosen stage."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        # A background shell starts jobs with SIGINT ignored, and Python then never raises
        # KeyboardInterrupt: give the child the default handler, as a terminal would.
        return subprocess.Popen([sys.executable, "-m", "worldplan.experiments.cli", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def run_to_end(args: list[str], log: Path, timeout: float = 600) -> int:
    proc = cli(args, log)
    return proc.wait(timeout=timeout)


def interrupt_in_stage(args: list[str], run: Path, stage: str, sig: int, log: Path,
                       max_delay: float, seed: int, timeout: float = 300) -> int:
    """Start ``worldplan ARGS``, wait until ``stage`` has started, wait a random time in
    ``[0, max_delay]`` s, send ``sig``; return the exit code. Fails if the stage ended
    before the signal (then the test did not interrupt anything)."""
    proc = cli(args, log)
    marker = run / "stages" / f"{stage}.started.json"
    t0 = time.monotonic()
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {stage} started:\n"
                                 + log.read_text()[-3000:])
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{stage} did not start within {timeout} s")
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, max_delay))
    still_running = proc.poll() is None and marker.exists()
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    assert still_running, f"{stage} finished before the signal; make it longer"
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 130, log.read_text()[-3000:]
    return code
