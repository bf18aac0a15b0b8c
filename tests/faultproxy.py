"""A TCP proxy for fault tests: forwards to a target, and on command adds latency,
stops forwarding (a silent partition), or cuts every connection."""

from __future__ import annotations

import asyncio
import threading


class FaultProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self.delay = 0.0  # seconds added to every chunk, both ways
        self.blackhole = False  # accept and read, forward nothing
        self._conns: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server = None

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        return self

    async def _listen(self):
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._conns.discard(w)
            w.close()

    async def _pipe(self, reader, writer):
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.blackhole:
                continue
            writer.write(data)
            await writer.drain()
        writer.close()

    def cut(self) -> None:
        """Reset every connection now (a reply in flight is lost)."""
        def go():
            for w in list(self._conns):
                w.transport.abort()
            self._conns.clear()
        self._loop.call_soon_threadsafe(go)

    def stop(self) -> None:
        async def shutdown():
            for w in list(self._conns):
                w.transport.abort()
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
