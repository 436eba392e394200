"""The ``fedmed`` command line: serve files, check a config, run the demo.

    fedmed serve --config config.yaml --data "cohort=cohort.csv" --port 5000
    fedmed serve --config config.yaml --data "registry=data/*.parquet" --in-place
    fedmed serve --config config.yaml --data "labs=labs.csv" --person "labs*=patient"
    fedmed serve --config config.yaml --data "cohort=cohort.csv" --connection-limit 200 --channel-timeout 20
    fedmed check-config config.yaml
    fedmed demo
"""

from __future__ import annotations

import argparse
import ast
import errno
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".json": pd.read_json}
#: ``fedmed serve``'s defaults for waitress' ``connection_limit`` and ``channel_timeout`` (docs/security.md, 3.2).
CONNECTION_LIMIT = 100
CHANNEL_TIMEOUT = 30


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fedmed",
        description="Privacy-aware federated statistics: servers keep their rows, clients get aggregates.",
    )
    parser.add_argument("--version", action="version", version=f"fedmed {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="serve data files as fragments (CSV, Parquet, JSON)",
        description="Load data files with pandas and serve them as fragments with waitress until Ctrl-C.",
    )
    serve.add_argument("--config", required=True, help="the server's config (operations and privacy policies)")
    serve.add_argument("--data", action="append", default=[], metavar="NAME=FILE",
                       help="a fragment: its name and a .csv, .parquet or .json file (repeatable)")
    serve.add_argument("--in-place", action="store_true",
                       help="query .parquet and .csv files (globs allowed) where they lie with DuckDB instead of "
                            "loading them into memory (pip install 'fedmed[duckdb]')")
    serve.add_argument("--person", action="append", default=[], metavar="GLOB=COLUMN",
                       help="the column identifying a person in the fragments a name or glob matches, so that "
                            "privacy rules count persons, not rows (repeatable; wins over the config's 'persons')")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    serve.add_argument("--threads", type=int, default=8, help="waitress worker threads (default 8)")
    serve.add_argument("--connection-limit", type=_positive, default=CONNECTION_LIMIT, metavar="N",
                       help=f"most connections open at once; more wait until one closes (default {CONNECTION_LIMIT})")
    serve.add_argument("--channel-timeout", type=_positive, default=CHANNEL_TIMEOUT, metavar="SECONDS",
                       help="close a connection idle this long, so idle or half-open sockets cannot hold every "
                            f"slot (default {CHANNEL_TIMEOUT}; a request being answered is never cut)")

    check = commands.add_parser("check-config", help="validate a config; list its operations and policies")
    check.add_argument("path", help="the YAML config to check")

    commands.add_parser("demo", help="start two loopback servers, run a short analysis, print it and its plan")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_files(args)
    if args.command == "check-config":
        return check_config(args.path)
    if args.command == "demo":
        from .demo import run

        run()
        return 0
    parser.print_help()
    return 0


def serve_files(args: argparse.Namespace) -> int:
    """Load each ``NAME=FILE`` into a server and serve it until interrupted."""
    import logging

    from waitress.server import create_server

    from .config import load_config
    from .errors import ConfigError
    from .server.process import limit_arenas

    # before waitress starts its threads: they share two malloc arenas, so one request's freed memory
    # is reused by the next instead of kept once per thread (docs/scaling.md, section 4)
    limit_arenas()

    # the request log: one JSON line per request on stderr
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from .server import Server

    try:
        config = load_config(args.config).with_persons(person_columns(args.person), origin="--person")
        server = Server(config=config)
        for spec in args.data:
            name, data = load_fragment(spec, in_place=args.in_place)
            server[name] = data
    except (ConfigError, ValueError, OSError, ImportError) as exc:
        print(f"fedmed serve: {exc}", file=sys.stderr)
        return 2
    try:
        # poll() rather than select(), which fails past 1,024 open files: --connection-limit may be raised
        waitress = create_server(server.app, host=args.host, port=args.port, threads=args.threads,
                                 asyncore_use_poll=True, **connection_options(args.connection_limit, args.channel_timeout))
    except OSError as exc:
        print(f"fedmed serve: {listen_error(exc, args.host, args.port)}", file=sys.stderr)
        return 1
    print(f"FedMed server on http://{args.host}:{waitress.effective_port}")  # type: ignore[union-attr]
    for name in server:
        fragment = server[name]
        print(f"  fragment {name!r}: {fragment.rows} rows" + (f" ({fragment!r})" if args.in_place else "")
              + f"; privacy rules count {server.counting(name)}")
        for line in text_report(getattr(fragment, "data", None)):
            print(f"    {line}")
    policies = [p.describe() for p in server.config.privacy] or ["none: results are exact"]
    print("  privacy: " + "; ".join(policies))
    print("  auth: " + ("bearer tokens" if server.config.auth else "off (bind to 127.0.0.1 or put a proxy in front)"))
    print(f"  connections: at most {args.connection_limit}; idle ones closed after {args.channel_timeout} s")
    print("Ctrl-C stops.", flush=True)
    try:
        waitress.run()
    except KeyboardInterrupt:
        pass
    finally:
        waitress.close()
    print("stopped.")
    return 0


def listen_error(exc: OSError, host: str, port: int) -> str:
    """One line saying why the server cannot listen on ``host:port``, and what to do.

    Examples
    --------
    >>> import errno
    >>> listen_error(OSError(errno.EADDRINUSE, "Address already in use"), "127.0.0.1", 5000)
    'port 5000 on 127.0.0.1 is already in use; stop the program using it or choose another port with --port'
    """
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use; stop the program using it or choose another port "
                "with --port")
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port} of {host}; choose a port above 1023 with --port"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and --port"


def text_report(data: Any) -> list[str]:
    """Lines for the server's owner: each column that loaded as text although most of its values are numbers.

    A CSV column with a few values such as "unknown" or ">89" loads as
    text, and every statistic of it is refused. Counts are shown here, on
    the owner's own terminal, never to a client.

    Examples
    --------
    >>> frame = pd.DataFrame({"bmi": ["27.5", "31", "unknown", ">89", "22"], "sex": ["F", "M", "F", "F", "M"]})
    >>> text_report(frame)  # doctest: +NORMALIZE_WHITESPACE
    ["column 'bmi' loaded as text although 3 of its 5 values are numbers (2 are not): analysts convert it with
      data['bmi'].to_numeric(), which makes the others missing; or fix the file"]
    """
    if not isinstance(data, pd.DataFrame):
        return []
    from .ops.binary import to_numeric
    from .server.evaluate import _is_text

    lines = []
    for name in data.columns:
        column = data[name]
        if isinstance(column, pd.DataFrame) or not _is_text(column):
            continue  # a repeated column name: pandas gives a table
        present = int(column.notna().sum())
        numbers = int(to_numeric(column).notna().sum())
        if present and numbers * 2 > present:
            lines.append(f"column {str(name)!r} loaded as text although {numbers} of its {present} values are numbers "
                         f"({present - numbers} {'is' if present - numbers == 1 else 'are'} not): analysts convert "
                         f"it with data[{str(name)!r}].to_numeric(), which makes the others missing; or fix the file")
    return lines


def connection_options(limit: int, timeout: int) -> dict[str, int]:
    """waitress' settings for at most ``limit`` connections, each closed after ``timeout`` idle seconds.

    waitress looks for idle connections every ``cleanup_interval`` seconds
    (30 by default), which would let one stay idle for up to twice a
    30-second timeout: the interval is made half the timeout.

    Examples
    --------
    >>> connection_options(100, 30)
    {'connection_limit': 100, 'channel_timeout': 30, 'cleanup_interval': 15}
    """
    return {"connection_limit": limit, "channel_timeout": timeout, "cleanup_interval": max(1, min(30, timeout // 2))}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return value


def person_columns(specs: Sequence[str]) -> dict[str, str]:
    """``["labs*=patient", ...]`` -> ``{"labs*": "patient", ...}``, in the order given."""
    out = {}
    for spec in specs:
        glob, sep, column = spec.partition("=")
        if not sep or not glob or not column:
            raise ValueError(f"--person expects GLOB=COLUMN (a fragment name or glob, its person column), got {spec!r}")
        if glob in out:
            raise ValueError(f"--person {glob}=... is given twice")
        out[glob] = column
    return out


def load_fragment(spec: str, in_place: bool = False) -> tuple[str, Any]:
    """``"name=path/to/file.csv"`` -> (name, DataFrame), or a DuckDB-backed fragment ``in_place``."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--data expects NAME=FILE, got {spec!r}")
    if in_place:
        from . import fragments

        kinds = {".parquet": fragments.Parquet, ".csv": fragments.CSV}
        kind = kinds.get(Path(path).suffix.lower())
        if kind is None:
            raise ValueError(f"{path}: --in-place serves {' and '.join(kinds)} files")
        try:
            return name, kind(path)
        except ImportError:
            raise
        except Exception as exc:  # DuckDB's own errors (no such file, not Parquet): a message, not a traceback
            raise ValueError(f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    reader = READERS.get(Path(path).suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unsupported file type; use {', '.join(READERS)}")
    try:
        return name, reader(path)
    except ImportError as exc:  # Parquet without pyarrow
        raise ImportError(f"{path}: {exc}") from None


def check_config(path: str) -> int:
    """Print the config's operations and policies, or its first error with the line it is on."""
    from .config import load_config
    from .errors import ConfigError

    try:
        config = load_config(path)
    except ConfigError as exc:
        line = _line_of(path, str(exc))
        print(f"{path}:{line}: {exc}" if line else str(exc), file=sys.stderr)
        return 1
    print(f"{path}: OK")
    print(f"  elementwise ({len(config.elementwise)}): {', '.join(sorted(config.elementwise))}")
    print(f"  aggregates ({len(config.aggregates)}): {', '.join(sorted(config.aggregates))}")
    for policy in config.privacy or ():
        print(f"  policy: {policy.describe()}" + _scope(policy))
    if not config.privacy:
        print("  privacy: none (exact results; only for synthetic data)")
    print(f"  auth: {'bearer tokens' if config.auth else 'off'}; limits: {dict(config.limits)}")
    persons = ", ".join(f"{glob!r} by column {column!r}" for glob, column in config.persons.items())
    print(f"  persons: fragments {persons}; any other fragment counts rows" if persons else
          "  persons: none declared (privacy rules count rows; a person with several rows counts several times)")
    return 0


def _scope(policy: Any) -> str:
    parts = [f"filter {list(policy.filter)}" if policy.filter else "", f"reject {list(policy.reject)}" if policy.reject else ""]
    text = ", ".join(p for p in parts if p)
    return f" ({text})" if text else ""


#: A quoted key, as ``repr`` writes it: ``persons['labs*']``.
_QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_KEY = re.compile(rf": ((?:methods|privacy|auth|limits|persons)(?:[\w.]|\[\d+\]|\[(?:{_QUOTED})\])*):")


def _line_of(path: str, message: str) -> int | None:
    """The line of the key a config error names (``methods.add``, ``privacy[1].params``, ``persons['labs*']``),
    or of a YAML error."""
    found = re.search(r"line (\d+)", message)
    if found:  # YAML syntax errors carry their own position
        return int(found.group(1))
    match = _KEY.search(message)
    if not match:
        return None
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for part in re.findall(rf"\[(?:{_QUOTED})\]|[^.\[\]]+|\[\d+\]", match.group(1)):
        if part.startswith(("['", '["')):
            part = ast.literal_eval(part[1:-1])
        if isinstance(node, yaml.SequenceNode) and part.startswith("["):
            index = int(part[1:-1])
            if index >= len(node.value):
                break
            node = node.value[index]
            line = node.start_mark.line + 1
        elif isinstance(node, yaml.MappingNode):
            entry = next(((k, v) for k, v in node.value if k.value == part), None)
            if entry is None:
                break
            line, node = entry[0].start_mark.line + 1, entry[1]
        else:
            break
    return line


if __name__ == "__main__":
    sys.exit(main())
