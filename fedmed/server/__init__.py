"""The data owner's side: fragments, the evaluator, and the HTTP app."""

from .core import Server
from .fragments import Fragment, InMemory

__all__ = ["Server", "Fragment", "InMemory"]
