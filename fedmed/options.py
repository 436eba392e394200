"""Process-wide switches: ``fm.options.progress = False`` silences progress bars, and so on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Options:
    """FedMed's settings for this process.

    Attributes
    ----------
    progress : bool
        Show a progress bar (round, servers answered) when a computation
        takes longer than ``progress_delay`` seconds and the output is a
        terminal.
    progress_delay : float
        Seconds before the bar appears: quick computations never flash one.
    max_parallel_requests : int
        The most requests in flight at once; a round over more servers
        goes out in waves. Over wide-area round trips the waves are what a
        round costs: 200 servers at 100 ms took 7.4x one round trip with 32
        and 3.0-3.3x with 256 (``benchmarks/fanout.py``).
    """

    progress: bool = True
    progress_delay: float = 1.0
    max_parallel_requests: int = 256


options = Options()
