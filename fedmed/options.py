"""Process-wide switches: ``fm.options.progress = False`` silences progress bars, and so on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Options:
    """FedMed's settings for this process.

    Attributes
    ----------
    progress : bool
        Show a progress bar (servers answered, round) when a computation
        takes longer than ``progress_delay`` seconds and stderr is a
        terminal. One computation, one bar: a model's iterations count on
        it and name themselves ("binomial IRLS round 3/25").
    progress_delay : float
        Seconds before the bar appears, whether or not a server has answered
        yet: quick computations never flash one, slow ones show it on time.
    max_parallel_requests : int
        The most requests in flight at once; a round over more servers
        goes out in waves. Over wide-area round trips the waves are what a
        round costs: 200 servers at 100 ms took 7.4x one round trip with 32
        and 3.0-3.3x with 256 (``benchmarks/fanout.py``).
    max_response_bytes : int
        The largest server answer this client decodes (1 GiB). A larger one
        fails with a ``ServerError`` saying how large it was; raise the
        bound (``fm.options.max_response_bytes = 4 * 2**30``) to accept it,
        if this machine has the memory, or ask for less (fewer distinct
        values, coarser categories). Server requests have their own, smaller
        bound (the server's ``limits.max_body_bytes``).
    """

    progress: bool = True
    progress_delay: float = 1.0
    max_parallel_requests: int = 256
    max_response_bytes: int = 1 << 30


options = Options()
