"""Run a FedMed server with waitress in a background thread, and stop it cleanly.

Used by ``fedmed demo``, the tests and the benchmarks: each needs real
waitress servers on free loopback ports that start fast and stop without
leaving threads or sockets behind.
"""

from __future__ import annotations

import threading
from typing import Any

from waitress import wasyncore
from waitress.server import create_server


class BackgroundServer:
    """A waitress server running in a daemon thread; keyword ``options`` are waitress' own.

    Examples
    --------
    >>> import fedmed as fm, requests
    >>> server = fm.Server()
    >>> with BackgroundServer(server.app) as running:
    ...     requests.get(running.url + "/v1/info").status_code
    200
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, threads: int = 4, **options: Any) -> None:
        # port 0: the OS picks a free port, so parallel test runs never collide
        # an integer loop timeout (waitress truncates 0.05 to 0: a busy poll eating a core) and
        # poll() instead of select(), which breaks past 1024 open files;
        # ``options`` go to waitress as they are (connection_limit, channel_timeout, ...)
        self._server = create_server(
            app, host=host, port=port, threads=threads,
            **{"asyncore_loop_timeout": 1, "asyncore_use_poll": True, **options},
        )
        self._stopped = False
        self.host = host
        self.port = int(self._server.effective_port)  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._server.run, name=f"waitress:{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every connection; wait for the threads to end (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        server = self._server
        # Closing sockets from this thread would race the event loop; the
        # trigger runs the close inside the loop, which then finds its map
        # empty and returns.
        try:
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))  # type: ignore[union-attr]
        except OSError:  # the loop already closed its trigger: nothing left to stop
            pass
        self._thread.join(timeout)
        server.task_dispatcher.shutdown(timeout=timeout)  # type: ignore[union-attr]

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
