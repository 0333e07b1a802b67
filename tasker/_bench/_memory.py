"""Memory readings of the benchmarks: this process's RSS now, and its peak since a reset.

psutil is used when it is installed (a test extra, not a dependency of tasker); else
``/proc``, else ``getrusage``.
"""

from __future__ import annotations

import gc
import importlib
import os
import resource
import sys
from typing import Any

__all__ = ["current_rss", "peak_rss", "reset_peak_rss"]


def _psutil() -> Any:
    try:
        return importlib.import_module("psutil")
    except ImportError:  # psutil is a test extra, not a dependency of tasker
        return None


def current_rss() -> int:
    """Resident set size of this process now, in bytes (psutil, else /proc)."""
    psutil = _psutil()
    if psutil is not None:
        return int(psutil.Process().memory_info().rss)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


def reset_peak_rss() -> None:
    """Collect garbage and restart the peak-RSS high-water mark (Linux; a no-op elsewhere)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    """Peak resident set size since :func:`reset_peak_rss`, in bytes (else since start)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024
