"""Start the two servers of the quickstart on 127.0.0.1:5000 and :5001 (Ctrl-C stops both).

    python example/server.py
"""

import threading
from pathlib import Path

from waitress import serve

import fedmed as fm

# toy arrays of 3 and 2 values: the privacy-aware config.yaml would suppress them
CONFIG = Path(__file__).with_name("config-exact.yaml")


def main() -> None:
    first, second = fm.Server(config=CONFIG), fm.Server(config=CONFIG)
    first["test array 1/2"] = [1, 2, 3]
    second["test array 2/2"] = [4, 5]
    threading.Thread(target=serve, args=(first.app,), kwargs={"host": "127.0.0.1", "port": 5000}, daemon=True).start()
    print("serving 'test array 1/2' on http://127.0.0.1:5000 and 'test array 2/2' on http://127.0.0.1:5001")
    serve(second.app, host="127.0.0.1", port=5001)


if __name__ == "__main__":
    main()
