"""How much memory a request may cost a server, decided before any work is done.

A hospital server shares a modest machine with other services, so a few
hundred bytes of request must never make it allocate gigabytes. Every
request is therefore priced first, from sizes the server already knows
(rows and columns of the fragment, item sizes, text lengths, constants after
broadcasting), and refused when its price exceeds the server's budget
(config ``limits.memory_bytes``; by default a quarter of the machine's
memory, or of the address space a ``ulimit -v`` leaves, whichever is less).
"""

from __future__ import annotations

import os
import resource
from typing import Mapping

#: Share of the machine's memory (or of a ``ulimit -v`` cap) a server spends on one request by default.
SHARE = 4


def machine_budget() -> int:
    """The default budget: a quarter of the memory this process can use.

    The least of: physical memory, a cgroup (container) memory limit, and
    the address-space limit (``ulimit -v``), which also counts memory that
    is reserved but not used, such as thread stacks.
    """
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    cgroup = _cgroup_limit()
    if cgroup:
        limits.append(cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits) // SHARE


def request_budget(limits: Mapping[str, int | None]) -> int:
    """The bytes one request may cost: ``limits['memory_bytes']``, or the machine's default."""
    configured = limits.get("memory_bytes")
    return int(configured) if configured else machine_budget()


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None
