"""Process-wide switches: ``fm.options.progress = False`` silences progress bars."""

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
    """

    progress: bool = True
    progress_delay: float = 1.0


options = Options()
