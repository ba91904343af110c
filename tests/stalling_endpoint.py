"""An S3 endpoint that never answers: it accepts connections and reads what is sent, then
either stays silent or trickles one byte now and then, as a hung load balancer or a
saturated link does. For tests and the benchmark of a slow customer among healthy ones."""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stalling_endpoint(trickle_every: float | None = None) -> Iterator[str]:
    """An `http://127.0.0.1:<port>` URL whose server reads requests and never completes a
    response; with `trickle_every`, it sends one byte of a response header that often."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    connections: list[socket.socket] = []

    def serve(connection: socket.socket) -> None:
        connection.settimeout(0.2)
        trickle = iter(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1_000_000)
        while not stop.is_set():
            try:
                if not connection.recv(65536) and trickle_every is None:
                    return
            except TimeoutError:
                pass
            except OSError:
                return
            if trickle_every is not None and stop.wait(trickle_every) is False:
                try:
                    connection.send(bytes([next(trickle)]))
                except OSError:
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(connection)
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        acceptor.join()
        listener.close()
        for connection in connections:
            connection.close()
