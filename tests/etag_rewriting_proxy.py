"""An HTTP proxy in front of the real S3 server that, while `lying` is set, replaces the ETag
of every answer with another: a store (or a middlebox) whose answers say it holds other bytes
than were sent. Requests pass unchanged, Host header included, so their signatures hold."""

import http.client
import http.server
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from tests.local_http import serving

OTHER_ETAG = '"' + "0" * 32 + '"'


class Switch:
    def __init__(self) -> None:
        self.lying = True


@contextmanager
def etag_rewriting_proxy(upstream: str) -> Iterator[tuple[str, Switch]]:
    """(`http://127.0.0.1:<port>`, its switch) forwarding to `upstream`."""
    target = urlsplit(upstream)
    switch = Switch()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: object) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            connection.putrequest(
                self.command, self.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in self.headers.items():
                if name.lower() != "expect":  # the proxy has already said "continue"
                    connection.putheader(name, value)
            connection.endheaders(body)
            answer = connection.getresponse()
            data = answer.read()
            connection.close()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() in ("content-length", "transfer-encoding", "connection"):
                    continue
                if name.lower() == "etag" and switch.lying:
                    value = OTHER_ETAG
                self.send_header(name, value)
            if switch.lying and b"<ETag>" in data:  # a multipart completion's answer
                start, end = data.index(b"<ETag>") + 6, data.index(b"</ETag>")
                data = data[:start] + OTHER_ETAG.encode().replace(b'"', b"&quot;") + data[end:]
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    with serving(Handler) as url:
        yield url, switch
