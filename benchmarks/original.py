"""The runner's handle on the original fedmed 0.3.2: ``original_driver.py --serve`` in its own venv.

One long-lived driver process per benchmark run, so the runner can
interleave the original with FedMed repeat by repeat (both sides see the
same moment of a noisy machine). Every answer has a deadline; a driver that
misses one is killed and the original's remaining cells say why.
"""

from __future__ import annotations

import json
import queue
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from . import original_env

DRIVER = Path(__file__).resolve().parent / "original_driver.py"


class Original:
    """A running driver; ``start`` servers, ``run`` analyses, ``close``."""

    def __init__(self, python: Path) -> None:
        self._log = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(
            [str(python), str(DRIVER), "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env=original_env.clean_environ(), cwd=tempfile.gettempdir(),
        )
        self._answers: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.failure: str | None = None

    @classmethod
    def launch(cls, wanted: bool = True) -> tuple["Original | None", str]:
        """A driver, or ``None`` and why not (not wanted, or no venv)."""
        if not wanted:
            return None, "not run (--smoke or --no-original)"
        python, note = original_env.ensure()
        return (cls(python), note) if python is not None else (None, note)

    def _read(self) -> None:
        for line in self._process.stdout:  # type: ignore[union-attr]
            self._answers.put(line)
        self._answers.put("")

    def ask(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one command; its answer, or ``{"error": ...}`` (and the driver is gone) after ``timeout`` s."""
        if self.failure:
            return {"error": self.failure}
        try:
            self._process.stdin.write(json.dumps(command) + "\n")  # type: ignore[union-attr]
            self._process.stdin.flush()  # type: ignore[union-attr]
            line = self._answers.get(timeout=timeout)
        except (OSError, queue.Empty):
            line = ""
        if not line:
            self.failure = f"the original's driver did not answer {command.get('cmd')} within {timeout:g} s{self._tail()}"
            self.close()
            return {"error": self.failure}
        return json.loads(line)

    def start(self, servers: int, rows: int, delay: float, seed: int) -> dict[str, Any]:
        return self.ask({"cmd": "start", "servers": servers, "rows": rows, "delay": delay, "seed": seed}, 120)

    def run(self, analysis: str, timeout: float = 300) -> dict[str, Any]:
        return self.ask({"cmd": "run", "analysis": analysis}, timeout)

    def _tail(self) -> str:
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().splitlines() if line.strip()]
        return f" (driver's last output: {lines[-1][:200]})" if lines else ""

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._process.stdin.write('{"cmd": "quit"}\n')  # type: ignore[union-attr]
                self._process.stdin.flush()  # type: ignore[union-attr]
                self._process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._log.close()
