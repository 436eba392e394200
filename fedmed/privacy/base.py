"""The policy protocol: what a privacy policy sees, when it is asked, and what it may do.

A server runs every map task of a request through the policies of its own
config's ``privacy`` list, in order (a client's config has no say). Each
policy may implement any of five hooks; the base class :class:`Policy`
gives harmless defaults:

``recall(task)``
    Before anything is computed: return an answer already released for
    this query (see ``CacheLimit``), or ``MISSING``. A recalled answer is
    not admitted, computed or ``apply``-ed again, but it passes every
    ``released`` hook again, as sent before (plain msgpack values).
``admit(task)``
    Before evaluation: raise :class:`fedmed.PrivacyError` to refuse the
    query (see ``ComplexityCap``, ``Budget``).
``apply(task, value) -> value``
    After evaluation: return the value unchanged, changed (rounded,
    noised, rare cells removed), or raise ``PrivacyError`` to suppress it.
    ``task.disclosure`` says which rows the value came from.
``released(task, value)``
    After the value has passed every policy's ``apply`` and is about to
    leave, and again each time it is recalled: raise to withhold it (a
    ``PrivacyError``; any other exception withholds it too, and the
    server logs why).
``kept(task, value)``
    Once every ``released`` hook has passed a newly computed value: the
    place to remember it (``CacheLimit`` keeps answers here, so a value
    some hook withheld is never kept). Not a place to judge.

A policy that removes parts of a result (rare cells) says so with
``task.note(...)``; the client shows the note as a ``PrivacyWarning``.
Config entries may narrow a policy to some tasks with ``filter`` and
``reject`` glob patterns, e.g. ``data['age'].sum()`` or ``*.len()``,
matched against ``task.full_signature``: the whole task as code, never the
shortened ``task.signature`` shown in messages (see ``Scoped.applies``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

from ..errors import PrivacyError
from ..expr.node import Node, render_code, render_full, rewrite, walk
from ..expr.rowwise import Elementwise
from ..globs import compile_glob

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
    noised : set by a ``Noise`` policy's ``admit``: the released value will
        be noisy, so other policies should judge the noisy value.
    disclosure : the rows behind the value (set after evaluation; ``None``
        for a fragment kind that cannot tell).
    """

    fragment: str
    version: int
    node: Node
    client: str = "unknown"
    epsilon: float = 0.0
    delta: float = 0.0
    noised: bool = False
    disclosure: Any = None
    notes: list[str] = field(default_factory=list)

    @property
    def op(self) -> str:
        return self.node.op  # type: ignore[attr-defined]

    @cached_property
    def signature(self) -> str:
        """The task as readable code, e.g. ``data['age'].sum()``, long parts cut (for messages and logs)."""
        return render_code(self.node)

    @cached_property
    def full_signature(self) -> str | None:
        """The task as code, never cut: what ``filter``/``reject`` patterns are matched against.

        None when that text would be too long to write (``render_full``: a
        DAG that reuses nodes can stand for an exponentially long text).
        """
        return render_full(self.node)

    @cached_property
    def size(self) -> int:
        """Distinct nodes in the task's expression: the evaluations the server makes for it."""
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

    def kept(self, task: Task, value: Any) -> None:
        return None

    def describe(self) -> str:
        """Name and parameters, as shown in errors and on the status page."""
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class Scoped:
    """A configured policy with the ``filter``/``reject`` patterns that choose its tasks."""

    def __init__(self, policy: Any, filter: Sequence[str] = (), reject: Sequence[str] = ()) -> None:
        self.policy = policy
        self.filter = tuple(filter)
        self.reject = tuple(reject)
        self.applied = 0  # how many results it has seen (status page)

    def applies(self, task: Task) -> bool:
        """Whether the task matches a ``filter`` pattern (or there is none) and no ``reject`` pattern.

        Patterns see the whole task (``task.full_signature``): a shortened
        text would let a long constant push ``.len()`` out of sight of a
        ``*.len()`` filter. A task too long to write fails closed: every
        ``filter`` pattern counts as matching and no ``reject`` pattern
        does, so the policy applies.
        """
        if not self.filter and not self.reject:
            return True
        text = task.full_signature
        if text is None:
            return True
        if self.filter and not any(_fullmatch(p, text) for p in self.filter):
            return False
        return not any(_fullmatch(p, text) for p in self.reject)

    def hook(self, name: str) -> Any:
        """The policy's hook ``name``, or None when a custom policy does not define it."""
        return getattr(self.policy, name, None)

    def describe(self) -> str:
        describe = getattr(self.policy, "describe", None)
        return describe() if describe else type(self.policy).__name__


def _fullmatch(pattern: str, text: str) -> bool:
    """``compile_glob(pattern).fullmatch(text)``, in time linear in the text.

    A regular expression with several ``.*`` backtracks over the text once
    per star, and a task's text can be megabytes long. Between two stars a
    pattern is a run of fixed length (``?`` is one character), so: the first
    run must start the text, the last must end it, and each run between
    them is taken at its leftmost place after the previous one (a later
    place never leaves more room for the rest).
    """
    runs = pattern.split("*")
    if len(runs) == 1:
        return compile_glob(pattern).fullmatch(text) is not None
    first, *middle, last = runs
    start, end = len(first), len(text) - len(last)
    if start > end or not compile_glob(first).fullmatch(text, 0, start) or \
            not compile_glob(last).fullmatch(text, end):
        return False
    for run in middle:
        found = compile_glob(run).search(text, start, end)
        if found is None:
            return False
        start = found.end()
    return True
