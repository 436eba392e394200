"""The policy protocol: what a privacy policy sees, when it is asked, and what it may do.

A server runs every map task of a request through the policies of its own
config's ``privacy`` list, in order (a client's config has no say). Each
policy may implement any of four hooks; the base class :class:`Policy`
gives harmless defaults:

``recall(task)``
    Before anything is computed: return an answer already released for
    this query (see ``CacheLimit``), or ``MISSING``.
``admit(task)``
    Before evaluation: raise :class:`fedmed.PrivacyError` to refuse the
    query (see ``ComplexityCap``, ``Budget``).
``apply(task, value) -> value``
    After evaluation: return the value unchanged, changed (rounded,
    noised, rare cells removed), or raise ``PrivacyError`` to suppress it.
    ``task.disclosure`` says which rows the value came from.
``released(task, value)``
    After the value has passed every policy and is about to leave.

A policy that removes parts of a result (rare cells) says so with
``task.note(...)``; the client shows the note as a ``PrivacyWarning``.
Config entries may narrow a policy to some tasks with ``filter`` and
``reject`` glob patterns matched against ``task.signature``, e.g.
``data['age'].sum()`` or ``*.len()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Sequence

from ..errors import PrivacyError
from ..expr.node import Node, render_code, rewrite, walk
from ..expr.rowwise import Elementwise

MISSING = object()

#: Operations whose operands may be swapped without changing the result.
COMMUTATIVE = {"add", "mul", "eq", "ne", "and", "or"}


@dataclass
class Task:
    """One map task as policies see it.

    Attributes
    ----------
    fragment, version : the fragment and the version the task runs on.
    node : the ``Map`` node (``task.op`` is its aggregate's name).
    client : who asks (the auth token's name, else the client's address).
    epsilon : the differential-privacy cost the ``Noise`` policies that
        apply to this task will charge.
    delta : the same for delta (gaussian ``Noise``; 0 otherwise).
    disclosure : the rows behind the value (set after evaluation; ``None``
        for a fragment kind that cannot tell).
    """

    fragment: str
    version: int
    node: Node
    client: str = "unknown"
    epsilon: float = 0.0
    delta: float = 0.0
    disclosure: Any = None
    notes: list[str] = field(default_factory=list)

    @property
    def op(self) -> str:
        return self.node.op  # type: ignore[attr-defined]

    @cached_property
    def signature(self) -> str:
        """The task as readable code, e.g. ``data['age'].sum()``."""
        return render_code(self.node)

    @cached_property
    def size(self) -> int:
        """Distinct nodes in the task's expression."""
        return len({n.key for n in walk([self.node])})

    @cached_property
    def canonical_key(self) -> str:
        """Key of the expression with commutative operands in a fixed order (``a + b`` = ``b + a``)."""

        def order(node: Node) -> Node | None:
            if isinstance(node, Elementwise) and node.op in COMMUTATIVE:
                return Elementwise(node.op, tuple(sorted(node.args, key=lambda n: n.key)))
            return None

        return rewrite(self.node, order).key

    def note(self, text: str) -> None:
        """Tell the client something was withheld from this result."""
        self.notes.append(text)

    def refuse(self, policy: "Policy", reason: str) -> PrivacyError:
        """The error that suppresses this task, naming the policy."""
        return PrivacyError(reason, fragment=self.fragment, operation=self.signature, policy=policy.describe())


class Policy:
    """Base class of privacy policies: every hook does nothing until overridden."""

    #: Differential-privacy epsilon one release through this policy costs (``Noise`` sets it).
    cost: float = 0.0
    #: The delta of one release ((epsilon, delta)-DP; gaussian ``Noise`` sets it).
    delta_cost: float = 0.0

    def recall(self, task: Task) -> Any:
        return MISSING

    def admit(self, task: Task) -> None:
        return None

    def apply(self, task: Task, value: Any) -> Any:
        return value

    def released(self, task: Task, value: Any) -> None:
        return None

    def describe(self) -> str:
        """Name and parameters, as shown in errors and on the status page."""
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


@lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches anything, ``?`` one character; everything else literally (``[`` too: signatures
    are full of brackets, and a character class would make ``data['age'].sum()`` match nothing)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)


class Scoped:
    """A configured policy with the ``filter``/``reject`` patterns that choose its tasks."""

    def __init__(self, policy: Any, filter: Sequence[str] = (), reject: Sequence[str] = ()) -> None:
        self.policy = policy
        self.filter = tuple(filter)
        self.reject = tuple(reject)
        self.applied = 0  # how many results it has seen (status page)

    def applies(self, task: Task) -> bool:
        signature = task.signature
        if self.filter and not any(_glob(p).fullmatch(signature) for p in self.filter):
            return False
        return not any(_glob(p).fullmatch(signature) for p in self.reject)

    def hook(self, name: str) -> Any:
        """The policy's hook ``name``, or None when a custom policy does not define it."""
        return getattr(self.policy, name, None)

    def describe(self) -> str:
        describe = getattr(self.policy, "describe", None)
        return describe() if describe else type(self.policy).__name__
