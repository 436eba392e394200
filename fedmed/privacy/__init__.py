"""Privacy policies a server applies to every map result before it leaves.

See ``docs/privacy.md`` for each policy's threat, defaults and limits, and
:mod:`fedmed.privacy.base` for writing your own.
"""

from .base import MISSING, Policy, Scoped, Task
from .limits import CacheLimit, ComplexityCap
from .noise import Budget, Noise
from .release import Coarsening, Saturation
from .snapshot import Snapshot
from .threshold import Anonymity, Dominance

__all__ = [
    "Policy", "Task", "Scoped", "MISSING",
    "Anonymity", "Dominance", "Noise", "Budget", "Coarsening", "Saturation",
    "ComplexityCap", "CacheLimit", "Snapshot",
]
