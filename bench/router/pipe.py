"""The cheapest proxy Python can be: a TCP byte pipe on one epoll loop, for the router benchmark's `pipe` path.

    python bench/router/pipe.py --port P --pods ws://127.0.0.1:A,ws://127.0.0.1:B,...

Each accepted connection is paired with a new connection to the next pod (round
robin) and bytes are copied both ways as they come: no WebSocket parsing, no
HTTP, no asyncio, no session state (the upgrade handshake and /readyz pass
through to the pod). It is not a router (no pinning by session, no failover,
nothing a client could rely on); it is the floor: what any proxy written in
Python pays per message on this machine in system calls and interpreter
overhead, measured side by side with the router and nginx.
"""

from __future__ import annotations

import argparse
import itertools
import select
import signal
import socket
import sys
from urllib.parse import urlsplit

READ_BYTES = 256 * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pods", required=True, help="comma-separated ws://host:port of the stand-in pods")
    args = ap.parse_args()
    targets = itertools.cycle([(u.hostname, u.port) for u in map(urlsplit, args.pods.split(","))])

    listener = socket.create_server((args.host, args.port), backlog=4096)
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    peer: dict[int, socket.socket] = {}  # fd -> the socket its bytes go to
    own: dict[int, socket.socket] = {}  # fd -> its socket
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))

    def close_pair(fd: int) -> None:
        for s in (own.pop(fd, None), peer.pop(fd, None)):
            if s is not None and s.fileno() >= 0:
                other = s.fileno()
                own.pop(other, None)
                peer.pop(other, None)
                poller.unregister(other)
                s.close()

    while not stopping:
        try:
            events = poller.poll(1.0)
        except InterruptedError:
            continue
        for fd, _ in events:
            if fd == listener.fileno():
                while True:
                    try:
                        client, _ = listener.accept()
                    except BlockingIOError:
                        break
                    upstream = socket.create_connection(next(targets))
                    for s in (client, upstream):
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        s.setblocking(False)
                        own[s.fileno()] = s
                        poller.register(s.fileno(), select.EPOLLIN)
                    peer[client.fileno()], peer[upstream.fileno()] = upstream, client
                continue
            sock = own.get(fd)
            if sock is None:
                continue
            try:
                data = sock.recv(READ_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                close_pair(fd)
                continue
            out = peer[fd]
            try:
                sent = out.send(data)
                if sent < len(data):  # rare on loopback at these rates: finish it blocking
                    out.setblocking(True)
                    out.sendall(data[sent:])
                    out.setblocking(False)
            except OSError:
                close_pair(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
