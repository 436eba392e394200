"""The one executor: runs a plan round by round over any mix of backends.

Per round it builds the requests (``plan_requests``), sends them to all
servers at once from a bounded thread pool, pools each reduce's partial
results, and moves on; the client graph is evaluated at the end. Backends
only move bytes, so Local, Simulation and Remote behave the same.
"""

from __future__ import annotations

import atexit
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Hashable, Iterator, Sequence

from tqdm import tqdm

from . import wire
from .backend.base import error_from_wire
from .errors import FedMedError, PrivacyError, PrivacyWarning, ServerError, ServerWarning
from .expr.client import Apply, Call, Reduce, Scalar
from .expr.node import Node, render_code, walk
from .expr.optimize import OptFlags, Request, make_plan, plan_requests
from .ops.columns import reduce_columns
from .options import options

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _fan_out() -> ThreadPoolExecutor:
    """The process's bounded pool (``fm.options.max_parallel_requests`` threads, made as needed)."""
    global _pool, _pool_size
    size = int(options.max_parallel_requests)
    if size < 1:
        raise ValueError(f"fm.options.max_parallel_requests must be at least 1, not {size}")
    with _pool_lock:
        if _pool is None or size != _pool_size:
            if _pool is not None:
                _pool.shutdown(wait=False)  # the option changed: requests in flight finish on the old threads
            _pool, _pool_size = ThreadPoolExecutor(max_workers=size, thread_name_prefix="fedmed"), size
        return _pool


@atexit.register
def _shut_down() -> None:
    if _pool is not None:
        _pool.shutdown(wait=False)


CHOICES = ("raise", "skip")
#: ``on_suppressed="keep"``: each refused partial reaches its reduce as the ``PrivacyError`` itself, and the
#: server stays in every other task: for a statistic that asks several alternatives of one question in one
#: round and takes, per server, those answered (``fm.stats.coxph``'s ladder of time bins).
KEEP = "keep"


@dataclass(frozen=True)
class Skipped:
    """A partial result left out of the pooling: its server failed or its policy withheld it."""

    error: ServerError


def execute(
    outputs: Sequence[Node], flags: OptFlags = OptFlags(), on_suppressed: str = "raise", on_error: str = "raise"
) -> list[Any]:
    """Compute the values of ``outputs`` (client nodes) in as few rounds as their dependencies allow.

    ``on_suppressed="raise"`` (default) raises the ``PrivacyError`` of the
    first suppressed task; ``on_error="raise"`` the error of the first
    failing server. ``"skip"`` pools the servers that answered and warns
    (``PrivacyWarning`` / ``ServerWarning``) which were left out; a result
    no server answered still raises. Notes about withheld cells arrive as
    ``PrivacyWarning``s.
    """
    for name, choice in (("on_suppressed", on_suppressed), ("on_error", on_error)):
        if choice not in CHOICES and not (name == "on_suppressed" and choice == KEEP):
            raise ValueError(f"{name} must be one of {CHOICES}, not {choice!r}")
    keep = on_suppressed == KEEP
    plan = make_plan(outputs, flags)
    identity = flags.identity()
    values: dict[Hashable, Any] = {}
    left_out: dict[str, ServerError] = {}  # source uid -> why it is out of this whole computation
    with progress() as bar:
        for number, reduces in enumerate(plan.rounds, start=1):
            requests = plan_requests(reduces, flags, lambda node: _client_value(node, values, identity))
            bar.expect(len(requests))
            bar.stage(f"round {number}/{len(plan.rounds)}")
            partials = _send_all(requests, flags, on_suppressed != "raise", on_error == "skip", bar)
            if keep:
                partials = {key: _kept(part) for key, part in partials.items()}
            _leave_out(partials, left_out, first_round=number == 1)
            for reduce in reduces:
                parts = [_part(partials[(id(reduce), source.uid)], source.uid, left_out) for source in reduce.sources]
                values[identity(reduce)] = _reduce(reduce, parts)
    return [_client_value(node, values, identity) for node in outputs]


def _leave_out(partials: dict[tuple[int, str], Any], left_out: dict[str, ServerError], first_round: bool) -> None:
    """A source skipped for one task is skipped for every task: a mean never divides a sum
    over two servers by a count over three."""
    for (_, uid), part in partials.items():
        if isinstance(part, Skipped) and uid not in left_out:
            if not first_round:
                raise FedMedError(
                    f"{part.error.server} was left out in a later round, after earlier rounds had pooled it; "
                    f"no consistent result without it: {part.error}"
                ) from part.error
            left_out[uid] = part.error


def _kept(part: Any) -> Any:
    """A refused partial as the ``PrivacyError`` its reduce receives (``on_suppressed="keep"``)."""
    return part.error if isinstance(part, Skipped) and isinstance(part.error, PrivacyError) else part


def _part(part: Any, uid: str, left_out: dict[str, ServerError]) -> Any:
    return Skipped(left_out[uid]) if uid in left_out else part


class Progress:
    """A computation's handle on its progress bar: answers expected and received, and the stage shown.

    Only the outermost handle names the stage, so a model's label ("binomial
    IRLS round 3/25") is not overwritten by the rounds of the computes it makes.
    """

    def __init__(self, bar: tqdm, lock: threading.Lock, outermost: bool) -> None:
        self.bar, self._lock, self._outermost = bar, lock, outermost

    def expect(self, answers: int) -> None:
        """``answers`` more requests are on their way."""
        with self._lock:
            self.bar.total = (self.bar.total or 0) + answers  # (reset() would draw before the delay)

    def answered(self) -> None:
        """One answer arrived (called from the request threads, hence the lock)."""
        with self._lock:
            self.bar.update(1)

    def stage(self, text: str) -> None:
        """Show ``text`` after the counts, from the next redraw on."""
        if self._outermost:
            with self._lock:
                self.bar.set_postfix_str(text, refresh=False)  # refresh=True would draw before the delay

    def redraw(self) -> None:
        # update(0) rather than refresh(): it honours the delay and records the draw, so that
        # close() knows there is a bar to erase
        with self._lock:
            self.bar.update(0)


_current: ContextVar[Progress | None] = ContextVar("fedmed_progress", default=None)
TICK = 0.5  # seconds between redraws while waiting: the elapsed time keeps moving


@contextmanager
def progress() -> Iterator[Progress]:
    """The progress bar of the computation running in this thread: one bar, however many computes it makes.

    The outermost call opens the bar; calls nested in it (each ``compute()``
    of a model's iterations) count their answers on the same bar. The bar
    appears once the computation has taken ``fm.options.progress_delay``
    seconds, even while no server has answered yet, and only when stderr is
    a terminal.

    Examples
    --------
    >>> from fedmed.executor import progress
    >>> with progress() as model:  # e.g. a regression's iterations
    ...     for number in (1, 2):
    ...         model.stage(f"my model round {number}/2")
    ...         with progress() as one_compute:  # what each iteration's compute() opens
    ...             one_compute.expect(3)
    ...             same = one_compute.bar is model.bar
    >>> same, model.bar.total
    (True, 6)
    """
    outer = _current.get()
    if outer is not None:
        yield Progress(outer.bar, outer._lock, outermost=False)
        return
    # delay: the bar appears only once a computation has taken options.progress_delay seconds;
    # disable=None: tqdm stays silent when stderr is not a terminal (scripts, CI, notebooks' logs);
    # miniters=0: every answer may redraw (a computation has few), and so may the waiting ticks
    bar = tqdm(total=None, desc="fedmed", unit="answer", delay=options.progress_delay,
               disable=None if options.progress else True, leave=False, miniters=0)
    handle = Progress(bar, threading.Lock(), outermost=True)
    token = _current.set(handle)
    try:
        with bar, _redrawn_while_waiting(handle):
            yield handle
    finally:
        _current.reset(token)


@contextmanager
def _redrawn_while_waiting(handle: Progress) -> Iterator[None]:
    """Redraw the bar from a small thread until the computation ends.

    tqdm checks its delay only when the count changes: waiting on a slow or
    hung server, the bar would stay hidden until the answer came. The thread
    is joined on the way out (also on errors and Ctrl-C); a silent bar needs none.
    """
    if handle.bar.disable:
        yield
        return
    done = threading.Event()

    def tick() -> None:
        wait = max(float(options.progress_delay), 0.0)
        while not done.wait(wait):
            handle.redraw()
            wait = TICK

    thread = threading.Thread(target=tick, name="fedmed-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _send_all(
    requests: list[Request], flags: OptFlags, skip_suppressed: bool, skip_failed: bool, bar: Progress
) -> dict[tuple[int, str], Any]:
    """Send every request of a round at once; the partial result of each (reduce, source)."""
    encoder = wire.Encoder(dedupe=flags.dedupe)
    tables = [encoder.encode(request.tasks) for request in requests]  # here, in one thread: shared tables

    def send(request: Request, table: wire.Table) -> tuple[list[Any], list[str]]:
        try:
            return _send(request, table, skip_suppressed)
        except ServerError as exc:
            if not skip_failed or isinstance(exc, PrivacyError):
                raise
            return [Skipped(exc.located(server=request.link.name, fragment=t.source.fragment)) for t in request.tasks], []
        finally:
            bar.answered()

    one = len(requests) == 1  # sent from this thread: no pool for a single server
    responses = [send(requests[0], tables[0])] if one else list(_fan_out().map(send, requests, tables))
    partials: dict[tuple[int, str], Any] = {}
    for request, (results, notes) in zip(requests, responses):
        for text in notes:  # warned here, in the caller's thread, so filters and pytest see them
            warnings.warn(text, PrivacyWarning, stacklevel=4)
        for task, result in zip(request.tasks, results):
            partials[(id(task.reduce), task.source.uid)] = result
    return partials


def _send(request: Request, table: wire.Table, skip: bool) -> tuple[list[Any], list[str]]:
    """One request: the value of each task (or ``Skipped``), and the servers' notes; errors are raised."""
    server = request.link.name
    response = request.link.send(table.request())
    results = response["results"]
    if len(results) != len(request.tasks):
        raise ServerError(f"the server sent {len(results)} results for {len(request.tasks)} tasks", server=server)
    values, notes = [], []
    for task, result in zip(request.tasks, results):
        if not isinstance(result, dict) or ("value" not in result and "error" not in result):
            raise ServerError("the server sent a malformed result", server=server)
        if "error" in result:
            error = error_from_wire(result["error"], server).located(fragment=task.source.fragment)
            if not (skip and isinstance(error, PrivacyError)):
                raise error
            values.append(Skipped(error))
            continue
        values.append(result["value"])
        if result.get("notes"):
            where = f"{server} [{task.source.fragment!r}] {render_code(task.map)}"
            notes += [f"{where}: {note}" for note in result["notes"]]
    return values, notes


def _reduce(reduce: Reduce, parts: list[Any]) -> Any:
    skipped = [p for p in parts if isinstance(p, Skipped)]
    if skipped:
        if len(skipped) == len(parts):
            raise skipped[0].error
        left_out = "; ".join(f"{s.error.server} [{s.error.fragment!r}]: {s.error.message}" for s in skipped)
        kind = PrivacyWarning if all(isinstance(s.error, PrivacyError) for s in skipped) else ServerWarning
        warnings.warn(
            f"{reduce.op} pooled {len(parts) - len(skipped)} of {len(parts)} sources; left out: {left_out}",
            kind,
            stacklevel=4,
        )
        parts = [p for p in parts if not isinstance(p, Skipped)]
    try:
        return reduce_columns(reduce.fn, parts)
    except Exception as exc:
        raise FedMedError(f"reduce of {reduce.op!r} failed on the client: {type(exc).__name__}: {exc}") from exc


def _client_value(root: Node, values: dict[Hashable, Any], identity: Any) -> Any:
    """Evaluate the client graph below ``root``; reduces must already be in ``values``."""
    for node in walk([root], stop=lambda n: isinstance(n, Reduce)):
        ident = identity(node)
        if ident in values:
            continue
        if isinstance(node, Scalar):
            values[ident] = node.value
        elif isinstance(node, (Apply, Call)):
            values[ident] = node.evaluate(*(values[identity(c)] for c in node.children))
        else:
            raise FedMedError(f"cannot evaluate a {node.kind} node on the client")
    return values[identity(root)]
