"""The optional native (C) core of the grid A*, built on first use and loaded with ctypes.

``_astar.c`` ships beside this file. The first call compiles it with the system C
compiler (``$CC``, else ``cc``) into a cache folder (``$WORLDPLAN_CACHE`` or
``~/.cache/worldplan``), keyed by a hash of the source, so it is built once per machine
and version. Without a compiler, or with ``WORLDPLAN_NO_NATIVE=1``, :func:`load` returns
``None`` and the planners fall back to pure Python (same results, about 50x slower).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("_astar.c")
_LIB: ctypes.CDLL | None = None
_TRIED = False


def cache_dir() -> Path:
    """Where compiled libraries go."""
    root = os.environ.get("WORLDPLAN_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "worldplan"


def _library_path() -> Path:
    digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:16]
    tag = f"{platform.system()}-{platform.machine()}-py{sys.version_info[0]}{sys.version_info[1]}"
    suffix = ".dll" if os.name == "nt" else ".so"
    return cache_dir() / f"wp_astar-{digest}-{tag}{suffix}"


def _compile(target: Path) -> bool:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        log.warning("no C compiler found; grid A* uses the pure-Python fallback")
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    cmd = [compiler, "-O3", "-std=c99", "-shared", "-fPIC", str(_SOURCE), "-o", tmp, "-lm"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log.warning("compiling %s failed (%s); using the Python fallback", _SOURCE, proc.stderr)
            return False
        os.replace(tmp, target)  # atomic: a concurrent process sees all or nothing
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("compiling %s failed (%s); using the Python fallback", _SOURCE, exc)
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def load() -> ctypes.CDLL | None:
    """The native library, compiling it if needed; ``None`` when unavailable."""
    global _LIB, _TRIED
    if _TRIED:
        return _LIB
    _TRIED = True
    if os.environ.get("WORLDPLAN_NO_NATIVE"):
        return None
    try:
        path = _library_path()
        if not path.is_file() and not _compile(path):
            return None
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        log.warning("loading the native A* failed (%s); using the Python fallback", exc)
        return None
    fn = lib.wp_astar
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_void_p,  # occ uint8 [H*W]
        ctypes.c_int32,  # H
        ctypes.c_int32,  # W
        ctypes.c_int32,  # start
        ctypes.c_int32,  # goal (-1: all cells)
        ctypes.c_int32,  # connectivity
        ctypes.c_double,  # weight
        ctypes.c_int32,  # corner cutting
        ctypes.c_void_p,  # g float64 [H*W]
        ctypes.c_void_p,  # parent int32 [H*W]
        ctypes.POINTER(ctypes.c_int64),  # expanded
    ]
    trace = lib.wp_trace
    trace.restype = ctypes.c_int64
    trace.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p,
                      ctypes.c_int64]
    _LIB = lib
    return lib
