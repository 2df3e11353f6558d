"""The default torch thread count: as many threads as there are idle cores, at least one.

torch's default (one thread per core) is the fastest on an idle machine, but on a busy one its
threads wait for each other at every parallel region: the small models' decoding ran 4-7x slower
with two threads than with one on a loaded 2-core machine (benchmarks/threads.py measures it).
Outputs do not depend on the thread count (the entropy coder runs on one thread regardless).

``$COMPRESSAI_VLIC_THREADS`` (an integer) overrides the choice.
"""

from __future__ import annotations

import math
import os

from compressai_vlic.errors import ConfigError

THREADS_ENV = "COMPRESSAI_VLIC_THREADS"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def idle_threads(cores: int | None = None, load: float | None = None) -> int:
    """Threads for one process: the cores the last minute's load average leaves idle, >= 1.

    Args:
        cores: cores available (default :func:`available_cores`).
        load: runnable processes, e.g. the 1-minute load average (default: the OS's; 0 where
            the OS has none).
    """
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    # Rounded to whole cores: a thread on a core another process keeps busy loses more to the
    # waits at each parallel region than it adds.
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def default_threads() -> int:
    """``$COMPRESSAI_VLIC_THREADS`` if set, else :func:`idle_threads`.

    Raises:
        ConfigError: the variable is set but not a positive integer.
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"${THREADS_ENV} must be a positive integer, got {value!r}")
        return int(value)
    return idle_threads()


def set_default_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (default :func:`default_threads`); returns it.

    Raises:
        ConfigError: ``threads`` < 1.
    """
    n = default_threads() if threads is None else threads
    if n < 1:
        raise ConfigError(f"threads must be >= 1, got {n}")
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
