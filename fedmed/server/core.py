"""The ``Server``: holds fragments, answers node-table requests, applies privacy policies.

``Server.handle(body) -> (status, body)`` is the whole protocol in one
function: decode, check, evaluate, apply policies, encode, and map every
exception to a status code and a msgpack error body. The HTTP app and the
in-process ``Simulation`` backend both call it, so they behave identically.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Mapping

import pandas as pd

from .. import wire
from ..config import Config, load_config
from ..errors import (
    ERROR_TYPES, BadRequest, OperationNotAllowed, PrivacyError, ProtocolError, ServerError, TooExpensive,
    UnknownFragment,
)
from ..expr.node import Node, render_code
from ..expr.rowwise import Elementwise, Fragment as FragmentNode, Map
from ..expr.tables import NEW_ROWS, RELATIONS
from ..privacy.base import MISSING, Task
from ..privacy.pipeline import Pipeline
from ..privacy.snapshot import Snapshot
from .evaluate import Evaluated, Failure
from .memory import Cost, MemoryPool, Price, mib, request_budget, too_big_relation
from .fragments import Fragment, InMemory, evaluate_tables, price_tables
from .http import create_app, log_unexpected, unexpected_error

log = logging.getLogger("fedmed.server")

#: How many recent requests the status page lists.
RECENT = 25


@dataclass
class Traffic:
    """Request and byte counters of a server (exact, for tests and benchmarks)."""

    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class Server:
    """A data owner's server: private fragments behind the FedMed protocol.

    Parameters
    ----------
    config : str, Path, dict or None
        The server's own config (operations it offers, privacy policies it
        applies); ``None`` uses FedMed's default, which has no policies.

    Examples
    --------
    >>> import fedmed as fm
    >>> server = fm.Server()
    >>> server["test array 1/2"] = [1, 2, 3]
    >>> data = fm.FedData([fm.Simulation(server, "test array 1/2")])
    >>> float(data.sum() / data.len())
    2.0

    Serve it with ``waitress.serve(server.app, host="127.0.0.1", port=5000)``.
    """

    def __init__(self, config: "str | Mapping[str, Any] | Config | None" = None) -> None:
        self.config = load_config(config)
        self.pipeline = Pipeline(self.config.privacy)
        self._fragments: dict[str, tuple[Fragment, int]] = {}
        self._pending: dict[str, Fragment] = {}
        self._lock = threading.Lock()
        self.traffic = Traffic()
        self.memory = MemoryPool(request_budget(self.config.limits))
        self.started = time.time()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)  # for the status page: no values
        self.app = create_app(self)

    # -- fragments -------------------------------------------------------
    def __setitem__(self, name: str, data: Any) -> None:
        """Add or replace a fragment. Under a ``Snapshot`` policy the new data is published
        only once enough rows differ from the published version; until then clients see that."""
        fragment = data if isinstance(data, Fragment) else InMemory(data)
        with self._lock:
            self._store(name, fragment)

    def append(self, name: str, rows: Any) -> None:
        """Add rows to an in-memory fragment (to its pending version under ``Snapshot``).

        Atomic: concurrent appends and replacements never lose rows, and
        each published append raises the version by one.
        """
        new = InMemory(rows).data
        # read, concatenate and store under one lock: two appends that read the same
        # table would otherwise each store it with only their own rows added
        with self._lock:
            current = self._pending.get(name)
            if current is None:
                current = self._fragments[name][0]
            self._store(name, InMemory(pd.concat([_rows_of(current), new], ignore_index=True)))

    def _store(self, name: str, fragment: Fragment) -> None:
        """Publish ``fragment`` as the next version of ``name`` (pending under ``Snapshot``); caller holds the lock."""
        snapshot = self._snapshot_policy()
        published, version = self._fragments.get(name, (None, 0))
        if published is not None and snapshot is not None:
            if not snapshot.should_publish(_rows_of(published), _rows_of(fragment)):
                self._pending[name] = fragment
                return
        self._pending.pop(name, None)
        self._fragments[name] = (fragment, version + 1)

    def _snapshot_policy(self) -> Snapshot | None:
        return next((p.policy for p in self.config.privacy if isinstance(p.policy, Snapshot)), None)

    def __getitem__(self, name: str) -> Fragment:
        return self._fragments[name][0]

    def __delitem__(self, name: str) -> None:
        with self._lock:
            del self._fragments[name]

    def __contains__(self, name: object) -> bool:
        return name in self._fragments

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._fragments))

    def version(self, name: str) -> int:
        """The version of fragment ``name``: 1 when first set, +1 on every replacement."""
        return self._fragments[name][1]

    def counting(self, name: str) -> str:
        """What the privacy rules of fragment ``name`` count: persons (by which column) or rows.

        Examples
        --------
        >>> server = Server({"methods": {"add": "fedmed.ops.binary.add"}, "persons": {"labs*": "patient"}})
        >>> server["labs"] = {"patient": [1, 1, 2], "value": [5.0, 6.0, 7.0]}
        >>> server["cohort"] = {"age": [50, 60]}
        >>> server.counting("labs")
        "persons by column 'patient'"
        >>> server.counting("cohort")
        'rows: no person key declared; a person with several rows counts several times'
        """
        person = self.config.person_column(name)
        if person is None:
            return "rows: no person key declared; a person with several rows counts several times"
        problem = self[name].cannot_count_persons(person)
        return f"persons by column {person!r}" + (f", but {problem}" if problem else "")

    def info(self) -> dict[str, Any]:
        """Protocol version, fragments (rows, version, and person column where declared), offered operations."""
        fragments = {}
        for name, (fragment, version) in list(self._fragments.items()):
            person = self.config.person_column(name)
            fragments[name] = {"rows": fragment.rows, "version": version, **({"person": person} if person else {})}
        return {
            "protocol": wire.PROTOCOL,
            "fragments": fragments,
            "operations": sorted([*self.config.elementwise, *self.config.aggregates]),
        }

    # -- protocol --------------------------------------------------------
    def handle(self, body: bytes, client: str = "unknown") -> tuple[int, bytes]:
        """Answer one protocol request from ``client``: ``(HTTP status, msgpack body)``; never raises.

        Logs one JSON line per request on the ``fedmed.server`` logger: who
        asked, which fragments and operations, rows touched, what each
        policy did, the status and the duration. Never a data value.
        """
        started = time.perf_counter()
        record: dict[str, Any] = {"client": client}
        try:
            request = wire.unpack(body, max_bytes=self.config.limits["max_body_bytes"])
            response = self.evaluate(request, client, record)
            status = _status_of(response["results"])
            out = wire.pack(response)
        except ProtocolError as exc:
            status, out = 400, _error_response(BadRequest(str(exc)))
        except ServerError as exc:
            status, out = exc.status, _error_response(exc)
        except Exception as exc:
            # includes a map value that cannot be encoded, and running out of memory (503): no traceback
            # or data leaves; the answer was packed in advance and log_unexpected never raises
            status, out = unexpected_error(exc)
            log_unexpected(exc)
        with self._lock:
            self.traffic.requests += 1
            self.traffic.bytes_in += len(body)
            self.traffic.bytes_out += len(out)
        record.update(status=status, ms=round(1000 * (time.perf_counter() - started), 2))
        log.info(json.dumps(record, default=str))
        self.recent.append(
            {"time": time.time(), "client": client, "status": status, "signatures": record.get("signatures", [])}
        )
        return status, out

    def evaluate(self, request: Any, client: str = "unknown", record: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate a decoded request for ``client``; raises ``ServerError`` for faults of the whole request.

        Each task is screened by the privacy policies first (a refused or
        cached task is not computed), then evaluated with the other tasks
        of its fragment, then released through the policies.
        """
        nodes, outputs = wire.decode_table(request, max_nodes=self.config.limits["max_nodes"])
        reads, tabled = _reads(nodes)
        labels = ["+".join(sorted(r)) or None for r in reads]
        self._check_operations(nodes, labels)
        for o in outputs:
            if not reads[o]:
                raise BadRequest(f"output {o} does not read any fragment")
        snapshot = self._snapshot(set().union(*(reads[o] for o in outputs)))
        tasks = {o: Task(labels[o], _version(snapshot, reads[o]), nodes[o], client) for o in outputs}  # type: ignore[arg-type]
        results: dict[int, dict[str, Any]] = {}
        active: dict[int, list[Any]] = {}
        pending: dict[str, list[int]] = defaultdict(list)
        joined: list[int] = []  # tasks over tables made in the request (fedmed.expr.tables)
        for o, task in tasks.items():
            try:
                active[o], answer = self.pipeline.screen(task)
            except ServerError as exc:
                results[o] = _task_error(task, exc)
                continue
            if answer is not MISSING:
                results[o] = self._recalled(task, answer, active[o])
            elif tabled[o]:
                joined.append(o)
            else:
                pending[task.fragment].append(o)
        groups = _groups(joined, reads)
        cost = 0
        for name, outs in pending.items():
            pending[name], price = self._priced(nodes, outs, snapshot[name][0].price, tasks, results)
            cost += price
        for i, (names, outs) in enumerate(groups):
            fragments = {n: snapshot[n][0] for n in sorted(names)}
            outs, price = self._priced(nodes, outs, partial(price_tables, fragments), tasks, results)
            groups[i] = names, outs
            cost += price
        with self.memory.reserve(cost):
            for name, outs in pending.items():
                fragment, _ = snapshot[name]
                person = self.config.person_column(name)
                for o, evaluated in zip(outs, fragment.evaluate(nodes, outs, self.config, person=person)):
                    results[o] = self._release(tasks[o], evaluated, active[o])
            for names, outs in groups:
                fragments = {n: snapshot[n][0] for n in sorted(names)}
                person_of = {n: self.config.person_column(n) for n in names}
                for o, evaluated in zip(outs, evaluate_tables(fragments, nodes, outs, self.config, person_of)):
                    results[o] = self._release(tasks[o], evaluated, active[o])
        if record is not None:
            record.update(_summary(tasks, results, snapshot))
        return {
            "protocol": wire.PROTOCOL,
            "results": [results[o] for o in outputs],
            "versions": {name: version for name, (_, version) in snapshot.items()},
        }

    def _snapshot(self, names: set[str]) -> dict[str, tuple[Fragment, int]]:
        # Take every fragment a request reads at once, so a concurrent
        # replacement never mixes two versions into one answer.
        with self._lock:
            missing = sorted(n for n in names if n not in self._fragments)
            if missing:
                raise UnknownFragment(f"no fragment named {missing[0]!r} on this server", fragment=missing[0])
            return {n: self._fragments[n] for n in names}

    def _check_operations(self, nodes: list[Node], owner: "list[str | None]") -> None:
        for i, node in enumerate(nodes):
            known = (
                self.config.elementwise if isinstance(node, Elementwise)
                else self.config.aggregates if isinstance(node, Map)
                else None
            )
            if known is not None and node.op not in known:  # type: ignore[attr-defined]
                raise OperationNotAllowed(
                    f"this server does not offer the operation {node.op!r}",  # type: ignore[attr-defined]
                    fragment=owner[i],
                    operation=node.op,  # type: ignore[attr-defined]
                )

    def _priced(self, nodes: list[Node], outs: list[int], pricer: Callable[..., Price | None],
                tasks: dict[int, Task], results: dict[int, dict[str, Any]]) -> tuple[list[int], int]:
        """The outputs worth evaluating, and the memory they will hold at most (``pricer(nodes, outs,
        config)``: a fragment's ``price``, or ``price_tables`` of the fragments tasks read together).

        Priced before any work (``fedmed.server.memory``): a task with a
        value bigger than the budget fails alone, naming that value; a
        request whose tasks together would hold more is refused whole (413).
        """
        budget = self.memory.capacity
        price = pricer(nodes, outs, self.config)
        if price is None:
            return outs, 0
        too_big = {i for i, c in price.costs.items() if c.peak > budget}
        if too_big:
            culprits = _culprits(nodes, too_big)
            kept = []
            for o in outs:
                culprit = culprits[o]
                if culprit is None:
                    kept.append(o)
                else:
                    results[o] = _task_error(tasks[o], TooExpensive(_too_big(nodes[culprit], price.costs[culprit], budget)))
            outs = kept
            price = pricer(nodes, outs, self.config)
            assert price is not None
        if price.peak > budget:
            i = price.biggest()
            raise TooExpensive(
                f"this request would hold about {mib(price.peak)} at once on this server, more than its budget of "
                f"{mib(budget)} per request (limits.memory_bytes); its largest value: {_too_big(nodes[i], price.costs[i])}. "
                "Send fewer tasks per request, fewer columns, or filter rows first")
        return outs, price.peak

    def _recalled(self, task: Task, answer: Any, active: list[Any]) -> dict[str, Any]:
        """A recalled answer once every active ``released`` hook has passed it again."""
        return _judged(task, lambda: self.pipeline.recalled(task, answer, active))

    def _release(self, task: Task, evaluated: Evaluated, active: list[Any]) -> dict[str, Any]:
        if isinstance(evaluated.value, Failure):
            return _task_error(task, evaluated.value.error)
        task.disclosure = evaluated.disclosure
        try:
            return _judged(task, lambda: self.pipeline.release(task, evaluated.value, active))
        finally:
            task.disclosure = None  # it holds the task's rows (and what judging cached): gone with the task


def _judged(task: Task, judge: Callable[[], Any]) -> dict[str, Any]:
    """The task's result as ``judge()`` (its policies) lets it out, or its error.

    A policy that breaks on some values must not answer with a 500 for them
    (an oracle), nor let the value through: the task is withheld, the same
    way whatever broke.
    """
    try:
        return _task_value(task, judge())
    except ServerError as exc:
        return _task_error(task, exc)
    except Exception:
        log.exception("a privacy policy failed while judging a result; the result is withheld")
        return _task_error(task, PrivacyError("withheld: this server's privacy policies could not judge "
                                              "the result (the server's log says why)"))


def _culprits(nodes: list[Node], bad: set[int]) -> list[int | None]:
    """For each node, a node of ``bad`` below it (or itself), or None: one pass in table order."""
    position = {id(node): i for i, node in enumerate(nodes)}
    found: list[int | None] = []
    for i, node in enumerate(nodes):
        below = next((found[position[id(c)]] for c in node.children if found[position[id(c)]] is not None), None)
        found.append(below if below is not None else i if i in bad else None)  # the deepest: the cause
    return found


def _too_big(node: Node, cost: Cost, budget: int | None = None) -> str:
    """Which value is too big, and why, without data: its code, shape and price."""
    if budget is not None and isinstance(node, RELATIONS):
        return too_big_relation(node, cost, budget)
    size = cost.size
    shape = f"{size.rows} rows x {size.columns} column(s)" if size.rowwise else f"{size.entries} value(s)"
    text = f" of text up to {size.text} characters" if size.text else ""
    said = f"{render_code(node, literals=False)[:120]} ({shape}{text}, about {mib(cost.peak)})"
    return said if budget is None else (f"{said} needs more than this server's memory budget of {mib(budget)} "
                                        "per request (limits.memory_bytes): select fewer columns or rows first")


def _status_of(results: list[dict[str, Any]]) -> int:
    """200, unless every task failed the same way: then that error's status (403 when all were refused)."""
    kinds = {r["error"]["type"] if "error" in r else None for r in results}
    if len(kinds) == 1 and None not in kinds:
        return ERROR_TYPES.get(kinds.pop(), ServerError).status  # type: ignore[arg-type]
    return 200


def _summary(tasks: dict[int, Task], results: dict[int, dict[str, Any]], snapshot: dict[str, Any]) -> dict[str, Any]:
    """The log fields of one request: no values, only what was asked and what happened."""
    outcomes: dict[str, int] = defaultdict(int)
    for result in results.values():
        error = result.get("error")
        label = "ok" if error is None else f"{error['type']}:{error.get('policy') or ''}".rstrip(":")
        outcomes[label] += 1
    return {
        "fragments": {name: version for name, (_, version) in snapshot.items()},
        "operations": sorted({t.op for t in tasks.values()}),
        "signatures": [render_code(t.node, literals=False)[:200] for t in tasks.values()],
        "rows": sum(fragment.rows or 0 for fragment, _ in snapshot.values()),
        "outcomes": dict(outcomes),
    }


def _task_value(task: Task, value: Any) -> dict[str, Any]:
    return {"value": value, "notes": task.notes} if task.notes else {"value": value}


def _task_error(task: Task, exc: ServerError) -> dict[str, Any]:
    return {"error": wire.error_body(exc.located(fragment=task.fragment, operation=task.signature))}


def _rows_of(fragment: Fragment) -> Any:
    if not isinstance(fragment, InMemory) or not isinstance(fragment.data, (pd.DataFrame, pd.Series)):
        raise TypeError("appending and snapshots need an in-memory table or column")
    return fragment.data


def _error_response(exc: ServerError) -> bytes:
    return wire.pack({"protocol": wire.PROTOCOL, "error": wire.error_body(exc)})


def _reads(nodes: list[Node]) -> tuple[list[frozenset[str]], list[bool]]:
    """The fragments below each node, and whether a table made in the request (a relation) is among them.

    Rows of two row spaces (a fragment's, a merge's, a concat's, a group-by's:
    ``fedmed.expr.tables.NEW_ROWS``) meet only in a merge or a concat; any
    other node combining them is refused, for pandas would align them by
    row labels that mean nothing across tables.
    """
    position = {id(node): i for i, node in enumerate(nodes)}
    reads: list[frozenset[str]] = []
    tabled: list[bool] = []
    space: list[int | None] = []
    for i, node in enumerate(nodes):
        kids = [position[id(c)] for c in node.children]
        if isinstance(node, FragmentNode):
            if not node.name:
                raise BadRequest(f"node {i}: a fragment node needs a name")
            reads.append(frozenset([node.name]))
            tabled.append(False)
            space.append(i)
            continue
        reads.append(frozenset().union(*(reads[k] for k in kids)))
        tabled.append(isinstance(node, RELATIONS) or any(tabled[k] for k in kids))
        if isinstance(node, NEW_ROWS):
            space.append(i)
            continue
        spaces = {space[k] for k in kids} - {None}
        if len(spaces) > 1:
            if not tabled[i]:
                raise BadRequest(f"node {i} combines rows of different fragments {sorted(reads[i])}")
            raise BadRequest(f"node {i} combines rows of different tables; merge them first (data.merge(other, on=...))")
        space.append(spaces.pop() if spaces else None)
    return reads, tabled


def _version(snapshot: dict[str, tuple[Fragment, int]], names: frozenset[str]) -> Any:
    """A task's version: its fragment's, or the versions of the fragments it reads, by name."""
    if len(names) == 1:
        return snapshot[next(iter(names))][1]
    return tuple(snapshot[n][1] for n in sorted(names))


def _groups(outputs: list[int], reads: list[frozenset[str]]) -> list[tuple[frozenset[str], list[int]]]:
    """Tasks over tables grouped by the fragments they read, joined where they share one: each group is
    one evaluation, so a table several tasks read (a per-person group-by) is made once."""
    groups: list[tuple[frozenset[str], list[int]]] = []
    for o in outputs:
        names, outs = reads[o], [o]
        for other in [g for g in groups if g[0] & names]:
            groups.remove(other)
            names, outs = names | other[0], other[1] + outs
        groups.append((names, sorted(outs, key=outputs.index)))
    return groups
