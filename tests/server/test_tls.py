"""fm.Remote over HTTPS: the server's certificate is verified, against REQUESTS_CA_BUNDLE when set.

A FedMed server behind a TLS endpoint on loopback: waitress has no TLS, so a
small forwarding server (``ssl``-wrapped ``http.server``) stands in for the
reverse proxy of docs/security.md, with a self-signed certificate for
``localhost`` made by ``openssl``.
"""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

import fedmed as fm
from fedmed.backend import remote

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``(https URL, certificate file)`` of a TLS endpoint answering with a FedMed server's app."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    server = fm.Server()
    server["values"] = [1, 2, 3]
    client = server.app.test_client()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            answer = client.post(self.path, data=body, headers=dict(self.headers))
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.data)))
            self.end_headers()
            self.wfile.write(answer.data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    remote._managers.clear()  # the pools read REQUESTS_CA_BUNDLE when made
    try:
        yield f"https://localhost:{httpd.server_address[1]}", cert
    finally:
        httpd.shutdown()
        httpd.server_close()
        remote._managers.clear()


def test_an_untrusted_certificate_fails_like_an_unreachable_server(tls_server, monkeypatch):
    url, _ = tls_server
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with pytest.raises(fm.ServerUnavailable, match=r"cannot connect \(SSLError\)"):
        fm.FedData([fm.Remote(url, "values", retries=0)]).sum().compute()


def test_a_certificate_trusted_through_requests_ca_bundle_is_accepted(tls_server, monkeypatch):
    url, cert = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    assert fm.FedData([fm.Remote(url, "values", retries=0)]).sum().compute() == 6
