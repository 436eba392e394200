"""The server process's own memory: how many malloc arenas it keeps, and handing freed memory back.

A request that builds a gigabyte of intermediates frees them when it ends,
but glibc's allocator keeps freed memory in its arenas (one per thread that
allocated, up to eight per core) instead of returning it to the operating
system, so a server's resident memory climbs with every big request and
stays there: 781 -> 2,330 MiB after four requests (issue 14). Two measures
keep it bounded, both no-ops where the C library is not glibc:
``limit_arenas`` caps the arenas (call it before worker threads start), and
``ReturnFreedMemory`` (installed by ``create_app``) calls ``malloc_trim``
after a response once the resident size has grown noticeably.
docs/scaling.md, section "A server's memory", has the measurements.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Any, Callable, Iterable, Iterator

#: ``mallopt`` parameter number of ``M_ARENA_MAX`` (glibc's malloc.h).
M_ARENA_MAX = -8
#: Arenas ``fedmed serve`` allows: two threads allocate at once without waiting, and freed memory is shared.
ARENAS = 2
#: Growth of the resident size since the last trim (bytes) after which a finished response trims.
TRIM_AFTER_GROWTH = 64 * 1024 * 1024


def _load_glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        libc.gnu_get_libc_version  # glibc only (musl has no malloc_trim)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


_glibc = _load_glibc()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let glibc's malloc keep at most ``arenas`` arenas; False where that cannot be set.

    Applies to threads that allocate for the first time from now on, so call
    it before a server starts its worker threads; the same as starting the
    process with ``MALLOC_ARENA_MAX=arenas``. ``fedmed serve`` does it.

    Examples
    --------
    >>> from fedmed.server.process import limit_arenas
    >>> limit_arenas(2) in (True, False)
    True
    """
    return _glibc is not None and _glibc.mallopt(M_ARENA_MAX, int(arenas)) == 1


def trim() -> bool:
    """Hand the allocator's free memory back to the operating system (``malloc_trim(0)``); False if none was."""
    return _glibc is not None and _glibc.malloc_trim(0) == 1


def resident_bytes() -> int | None:
    """This process's resident set size in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class ReturnFreedMemory:
    """WSGI middleware: once a response is sent, trim if the resident size grew by ``growth`` bytes.

    The check reads ``/proc/self/statm`` (microseconds); the trim itself runs
    only after requests that left memory behind, one thread at a time.

    Examples
    --------
    >>> import flask
    >>> app = flask.Flask("example")
    >>> app.wsgi_app = ReturnFreedMemory(app.wsgi_app)
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], growth: int = TRIM_AFTER_GROWTH) -> None:
        self.app = app
        self.growth = growth
        self.trims = 0
        self._floor = resident_bytes() or 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer = self.app(environ, start_response)
        if _glibc is None:
            return answer
        return _ThenCall(answer, self.after_response)

    def after_response(self) -> None:
        """Trim when the resident size is ``growth`` above what it was after the last trim."""
        rss = resident_bytes()
        if rss is None:
            return
        if rss < self._floor + self.growth:
            self._floor = min(self._floor, rss)  # memory given back by itself (freed mmaps) counts too
            return
        if not self._lock.acquire(blocking=False):  # another thread is trimming already
            return
        try:
            trim()
            self.trims += 1
            self._floor = resident_bytes() or 0
        finally:
            self._lock.release()


class _ThenCall:
    """A WSGI response iterable that calls ``then`` after closing, having let go of the response."""

    def __init__(self, answer: Iterable[bytes], then: Callable[[], None]) -> None:
        self._answer: Iterable[bytes] | None = answer
        self._then = then

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._answer or ())

    def close(self) -> None:
        answer, self._answer = self._answer, None  # the response's bytes may be freed before trimming
        try:
            if hasattr(answer, "close"):
                answer.close()  # type: ignore[union-attr]
        finally:
            del answer
            self._then()
