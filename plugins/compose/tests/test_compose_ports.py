"""The published-port check without Docker: only a socket bound or listening on the port
counts as taken, not the TIME-WAIT left by connections that just ended."""

from __future__ import annotations

import socket

from wrktalk_agent_compose.validation import PublishedPort, port_in_use


def _time_wait_port() -> int:
    """A loopback port whose only socket is in TIME-WAIT: the server side closed first.
    The listener sets SO_REUSEADDR as docker-proxy (a Go listener) does; Linux lets a new
    socket share a TIME-WAIT port only when both ends set it."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port: int = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the active close: TIME-WAIT stays on the listening port's side
        client.recv(1)  # the client sees the end and closes too
        client.close()
    return port


def test_a_port_with_only_time_wait_sockets_is_free() -> None:
    port = _time_wait_port()
    with socket.socket() as plain:  # what the check did before: refused
        try:
            plain.bind(("127.0.0.1", port))
            bound_without_reuse = True
        except OSError:
            bound_without_reuse = False
    assert not bound_without_reuse, "no TIME-WAIT: the test would prove nothing"
    assert not port_in_use(PublishedPort("127.0.0.1", port, "tcp"))


def test_a_listening_or_bound_tcp_socket_takes_the_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        assert port_in_use(PublishedPort("127.0.0.1", port, "tcp"))  # bound, not listening
        holder.listen()
        assert port_in_use(PublishedPort("127.0.0.1", port, "tcp"))
        assert port_in_use(PublishedPort("", port, "tcp"))  # all addresses include loopback
    assert not port_in_use(PublishedPort("127.0.0.1", port, "tcp"))


def test_a_udp_socket_takes_the_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # even one that shares
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        assert port_in_use(PublishedPort("127.0.0.1", port, "udp"))
