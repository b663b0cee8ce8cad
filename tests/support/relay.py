"""A loopback TCP relay that makes a client look like another host.

gRPC's Python client cannot choose its source address, but a server tells
anonymous callers apart by peer host. `SourceRelay(target, "127.0.0.2")` listens
on 127.0.0.1 and forwards each connection to `target` from 127.0.0.2 (any
127.0.0.0/8 address is this host on Linux), so a channel to `relay.address`
reaches the server as peer 127.0.0.2."""

from __future__ import annotations

import contextlib
import socket
import threading


class SourceRelay:
    def __init__(self, target: str, source_host: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host.strip("[]"), int(port))
        self.source_host = source_host
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name=f"relay-{source_host}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket()
            try:
                upstream.bind((self.source_host, 0))
                upstream.connect(self.target)
            except OSError:
                client.close()
                upstream.close()
                continue
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
