"""Process-wide switches: ``fm.options.progress = False`` silences progress bars."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Options:
    """FedMed's settings for this process.

    Attributes
    ----------
    progress : bool
        Show a progress bar (rounds, servers answered) for analyses with
        several rounds or many servers, when the output is a terminal.
    """

    progress: bool = True


options = Options()
