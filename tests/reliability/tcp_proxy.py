"""A fault-injecting TCP proxy for reliability tests and scripts (a test tool, not a service).

It forwards ``127.0.0.1:<port>`` to ``<target_host>:<target_port>`` from threads in the
calling process, and can cut the link the way a pulled cable does: nothing more is forwarded
and nothing is answered, so clients wait until their own timeouts fire.

API::

    from tcp_proxy import TcpProxy          # tests/ and tests/reliability/ on sys.path

    with TcpProxy(target_port=8001) as proxy:   # or proxy = TcpProxy(...).start(); proxy.stop()
        proxy.port          # the port it listens on (listen_port=0 picks a free one)
        proxy.url           # "http://127.0.0.1:<port>"
        proxy.cut()         # black hole: open connections are frozen (no byte is forwarded
                            #   either way, neither side is told), new connections are
                            #   accepted and never answered
        proxy.cut(mode="reset")  # instead: open connections and new ones are reset (RST),
                                 #   like a peer whose host is up but whose process is gone
        proxy.is_cut        # True between cut() and restore()
        proxy.restore()     # forwards new connections again; the connections held during the
                            #   cut are closed (as after an outage long enough for a timeout)
        proxy.stats()       # {"accepted": n, "forwarded": n, "held": n, "open": n,
                            #  "bytes_up": n, "bytes_down": n}

``TcpProxy(target_port, *, target_host="127.0.0.1", listen_port=0, listen_host="127.0.0.1")``:
``listen_port`` may be fixed so a test can stop one proxy and start another on the same port.
``stop()`` closes every socket and joins the threads (bounded); it is idempotent.

From the shell (for scripts that run it as its own process)::

    python tests/reliability/tcp_proxy.py --target-port 8001 [--listen-port 9001]

prints ``listening on 127.0.0.1:<port>`` once ready; SIGUSR1 cuts (black hole), SIGUSR2
restores, SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import select
import signal
import socket
import struct
import threading
import time

_POLL_S = 0.05
_CHUNK = 64 * 1024


def _close(sock: socket.socket | None, *, reset: bool = False) -> None:
    if sock is None:
        return
    try:
        if reset:
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Link:
    """One client connection and its upstream connection, pumped by one thread."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.frozen = False
        self.closed = False
        self.thread = threading.Thread(target=self._pump, name="tcp-proxy-link", daemon=True)

    def close(self, *, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        _close(self.client, reset=reset)
        _close(self.upstream, reset=reset)

    def _pump(self) -> None:
        peers = {self.client: self.upstream, self.upstream: self.client}
        try:
            while not self.closed and not self.proxy._stopping.is_set():
                if self.frozen:
                    # A frozen link reads nothing, so the kernel buffers fill and both sides
                    # just wait: what a pulled cable looks like from either end.
                    time.sleep(_POLL_S)
                    continue
                readable, _, _ = select.select([self.client, self.upstream], [], [], _POLL_S)
                for sock in readable:
                    if self.frozen or self.closed:
                        break
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    peers[sock].sendall(data)
                    self.proxy._count("bytes_up" if sock is self.client else "bytes_down", len(data))
        except (OSError, ValueError):
            return
        finally:
            self.close()
            self.proxy._forget(self)


class TcpProxy:
    """Forward a loopback port to a target port, with cut()/restore() faults (see module doc)."""

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", listen_port: int = 0,
                 listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, int(target_port))
        self._listen = (listen_host, int(listen_port))
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._links: set[_Link] = set()
        self._held: list[socket.socket] = []
        self._mode: str | None = None
        self._stats = {"accepted": 0, "forwarded": 0, "bytes_up": 0, "bytes_down": 0}
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self._listen)
        server.listen(128)
        server.settimeout(_POLL_S)
        self._server = server
        self.port = server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        _close(self._server)
        with self._lock:
            links, held = list(self._links), list(self._held)
            self._held.clear()
        for link in links:
            link.close()
        for sock in held:
            _close(sock)
        for link in links:
            link.thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self._listen[0]}:{self.port}"

    # -- faults ------------------------------------------------------------------------------

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    def cut(self, mode: str = "blackhole") -> None:
        """Stop forwarding. ``blackhole``: freeze open links, hold new ones unanswered.
        ``reset``: reset open links and every new connection."""
        if mode not in ("blackhole", "reset"):
            raise ValueError(f"cut mode must be 'blackhole' or 'reset', not {mode!r}")
        with self._lock:
            self._mode = mode
            links = list(self._links)
        for link in links:
            if mode == "reset":
                link.close(reset=True)
            else:
                link.frozen = True

    def restore(self) -> None:
        """Forward new connections again; close whatever was held during the cut."""
        with self._lock:
            self._mode = None
            frozen = [link for link in self._links if link.frozen]
            held = list(self._held)
            self._held.clear()
        for link in frozen:
            link.close()
        for sock in held:
            _close(sock)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats, open=len(self._links), held=len(self._held))

    # -- internals ---------------------------------------------------------------------------

    def _count(self, key: str, n: int) -> None:
        with self._lock:
            self._stats[key] += n

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._count("accepted", 1)
            mode = self._mode
            if mode == "reset":
                _close(client, reset=True)
                continue
            if mode == "blackhole":
                with self._lock:
                    self._held.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                # Nothing listens on the target: the client sees a reset, as it would directly.
                _close(client, reset=True)
                continue
            client.settimeout(None)
            link = _Link(self, client, upstream)
            with self._lock:
                self._links.add(link)
                self._stats["forwarded"] += 1
            link.thread.start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fault-injecting TCP proxy (SIGUSR1 cuts, SIGUSR2 restores).")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0)
    args = parser.parse_args(argv)
    proxy = TcpProxy(args.target_port, target_host=args.target_host, listen_port=args.listen_port).start()
    done = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: proxy.cut())
    signal.signal(signal.SIGUSR2, lambda *_: proxy.restore())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"listening on 127.0.0.1:{proxy.port}", flush=True)
    while not done.wait(0.2):
        pass
    proxy.stop()


if __name__ == "__main__":
    main()
