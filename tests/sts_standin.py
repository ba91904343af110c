"""A stand-in for AWS STS in front of the real S3 server. Ceph RGW 16 serves AssumeRole but never
checks an ExternalId (and refuses to assume a role whose trust policy has an sts:ExternalId
condition), so this answers as AWS documents it: an AssumeRole whose role's trust policy (here,
`expected`: role ARN -> ExternalId) holds another ExternalId, or none, is refused with a 403
AccessDenied ErrorResponse; every other request (a good AssumeRole, every S3 request) goes to
RGW unchanged, Host header included, so its signature holds. It records each AssumeRole's
parameters and the credentials RGW answered (for the tests' secret checks)."""

import http.client
import http.server
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.local_http import serving

_DENIED = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error>
    <Type>Sender</Type>
    <Code>AccessDenied</Code>
    <Message>User: {caller} is not authorized to perform: sts:AssumeRole on {role}</Message>
  </Error>
  <RequestId>{request}</RequestId>
</ErrorResponse>
"""


@dataclass
class StandIn:
    url: str
    expected: dict[str, str]  # role ARN -> the ExternalId its trust policy's condition holds
    assume_calls: list[dict[str, str]] = field(default_factory=list)  # each one's parameters
    refused: int = 0
    issued: list[str] = field(default_factory=list)  # key ids, secrets, tokens RGW answered
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def sts_standin(upstream: str) -> Iterator[StandIn]:
    """A StandIn at `http://127.0.0.1:<port>`, forwarding to `upstream`."""
    target = urlsplit(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: object) -> None:
            pass

        def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            head = self.command == "HEAD"  # its Content-Length is the object's, kept
            dropped = ("transfer-encoding", "connection") + (() if head else ("content-length",))
            for name, value in headers:
                if name.lower() not in dropped:
                    self.send_header(name, value)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            assume = None
            if self.command == "POST" and b"Action=AssumeRole" in body:
                assume = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                if assume.get("Action") != "AssumeRole":
                    assume = None
            if assume is not None:
                role = assume.get("RoleArn", "")
                with standin.lock:
                    standin.assume_calls.append(assume)
                wanted = standin.expected.get(role)
                if wanted is not None and assume.get("ExternalId") != wanted:
                    with standin.lock:
                        standin.refused += 1
                    page = _DENIED.format(
                        caller="arn:aws:iam:::user/deployer", role=role, request=uuid.uuid4()
                    ).encode()
                    self._answer(403, [("Content-Type", "text/xml")], page)
                    return
            status, headers, data = self._forward(body)
            if assume is not None and status == 200:
                found = re.findall(rb"<(?:AccessKeyId|SecretAccessKey|SessionToken)>([^<]+)<", data)
                with standin.lock:
                    standin.issued.extend(value.decode() for value in found)
            self._answer(status, headers, data)

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            connection.putrequest(
                self.command, self.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in self.headers.items():
                if name.lower() != "expect":  # the stand-in has already said "continue"
                    connection.putheader(name, value)
            connection.endheaders(body or None)
            answer = connection.getresponse()
            data = answer.read()
            connection.close()
            return answer.status, answer.getheaders(), data

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    with serving(Handler) as url:
        standin = StandIn(url, {})
        yield standin
