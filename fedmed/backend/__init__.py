"""Backends: where a fragment lives and how requests reach it.

``Remote`` (HTTP), ``Simulation`` (an in-process ``Server`` through msgpack)
and ``Local`` (in-process, exact). One executor drives them all.
"""

from .base import Link, Paired, Source
from .local import Local
from .remote import Remote
from .simulation import Simulation

__all__ = ["Link", "Paired", "Source", "Local", "Remote", "Simulation"]
