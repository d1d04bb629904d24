"""A TCP proxy for tests that can cut a link the way a real network does.

``drop()`` makes it stop forwarding without closing anything: bytes from either side are
read and thrown away, so both ends see an open connection that never answers (a firewall
dropping packets, a cable pulled, no RST). New connections are accepted and then ignored
too. ``heal()`` forwards again for new connections; the ones that lived through the cut
are closed (their byte streams lost data, as a real connection would have timed out).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def server_of(dsn: str) -> tuple[str, int] | str:
    """Where ``dsn`` connects: (host, port) over TCP, or a unix socket's path."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or "localhost"
    port = int(query.get("port") or parts.port or 5432)
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return host, port


class BlackholeProxy:
    """Listens on 127.0.0.1 and forwards to the server of a DSN (TCP or unix socket)."""

    def __init__(self, dsn: str) -> None:
        self.target = server_of(dsn)
        self.dropping = False
        self._cut: set[asyncio.StreamWriter] = set()
        self._open: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port: int = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def drop(self) -> None:
        def cut() -> None:
            self.dropping = True
            self._cut |= self._open

        self.loop.call_soon_threadsafe(cut)

    def heal(self) -> None:
        def mend() -> None:
            self.dropping = False
            for writer in self._cut:
                with contextlib.suppress(Exception):
                    writer.close()
            self._cut.clear()

        self.loop.call_soon_threadsafe(mend)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        if self.dropping:  # accepted, and never answered
            self._cut.add(writer)
            with contextlib.suppress(Exception):
                while await reader.read(65536):
                    pass
            return
        try:
            if isinstance(self.target, str):
                up_reader, up_writer = await asyncio.open_unix_connection(self.target)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._open.add(up_writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if self.dropping or writer in self._cut:
                        continue  # swallowed: the far end never hears of it
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._open.discard(writer)
        self._open.discard(up_writer)

    def dsn(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by this proxy's."""
        parts = urlsplit(dsn)
        netloc = parts.netloc.rsplit("@", 1)
        auth = f"{netloc[0]}@" if len(netloc) == 2 else ""
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")])
        return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{self.port}", query=query))

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            for writer in self._open:
                writer.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
