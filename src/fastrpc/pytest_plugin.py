"""pytest fixtures for testing and benchmarking your own fastrpc handlers.

Installed with fastrpc and registered through the ``pytest11`` entry point
``fastrpc`` (``-p no:fastrpc`` turns it off). It is passive until a test asks for one
of its fixtures: it adds no options, no autouse fixtures and starts nothing, and this
module imports nothing of fastrpc's I/O layer until a fixture runs.

Tell it what to serve by overriding ``fastrpc_router`` in your ``conftest.py``::

    import fastrpc, pytest

    router = fastrpc.Router()

    @router.method
    async def add(a: int, b: int) -> int:
        return a + b

    @pytest.fixture
    def fastrpc_router():
        return router

    def test_add(fastrpc_client):
        assert fastrpc_client.call("add", 1, 2) == 3

Fixtures:

* ``fastrpc_server``: a real fastrpc server on 127.0.0.1 (a free port) serving
  ``fastrpc_router``, in a thread with its own event loop (uvloop where installed), so
  sync tests, pytest-benchmark and async tests on any loop can all reach it. Yields a
  :class:`LiveServer` (``.url``, ``.port``, ``.codec``); stopped after the test.
* ``fastrpc_client``: a :class:`SyncClient` connected to it: ``call``, ``notify``,
  ``stream`` (a list of items) and ``run(coro)`` for anything else on ``.peer``, all
  blocking (its loop runs in a thread of its own, which keeps the connection alive
  between calls), so ``benchmark(fastrpc_client.call, "add", 1, 2)`` measures one
  round trip.
  In an async test, connect yourself instead: ``async with fastrpc_server.connect() as peer``.
* ``fastrpc_codec``: the payload codec of both, ``"msgpack"`` (default) or ``"json"``;
  parametrize it to run a test with both:
  ``@pytest.mark.parametrize("fastrpc_codec", ["msgpack", "json"])``.
* ``fastrpc_server_options`` / ``fastrpc_client_options``: extra keyword arguments for
  :func:`fastrpc.serve` / :func:`fastrpc.connect` (``{}`` by default; override or
  parametrize them like ``fastrpc_codec``).

The server shares the test process (and its GIL) with the client: figures from
``pytest --benchmark-compare`` compare handlers or payloads with each other under the
same setup, not against a server on another machine.

Registering costs one ``import fastrpc`` per pytest session (the package's
``__init__`` loads the library), and, as for every plugin installed with a library,
pytest rewrites the ``assert`` statements of the whole ``fastrpc`` package (a handful,
none on a hot path).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .client import connect
    from .peer import RpcPeer
    from .router import Router

__all__ = ["CODECS", "LiveServer", "SyncClient"]

CODECS = ("msgpack", "json")
START_TIMEOUT = 10.0  # seconds for the server thread to bind, or to stop


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LiveServer:
    """A fastrpc server on 127.0.0.1 in a thread of its own (``start()``/``stop()``)."""

    def __init__(self, router: Router, codec: str = "msgpack", **options: Any) -> None:
        if codec not in CODECS:
            raise ValueError(f"fastrpc_codec must be one of {CODECS}, not {codec!r}")
        self.router = router
        self.codec = codec
        self.options = options
        self.host = "127.0.0.1"
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="fastrpc-test-server", daemon=True)

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT``."""
        return f"ws://{self.host}:{self.port}"

    def connect(self, **options: Any) -> connect[RpcPeer]:
        """:func:`fastrpc.connect` to this server with its codec (await it or ``async with`` it)."""
        from .client import connect

        return connect(self.url, codec=self.codec, **options)

    def start(self) -> LiveServer:
        """Start serving; returns once the port is bound (or raises what stopped it)."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise TimeoutError(f"the fastrpc test server did not start within {START_TIMEOUT} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Close the server and its connections and join its thread."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT)
        if self._thread.is_alive():
            raise TimeoutError(f"the fastrpc test server did not stop within {START_TIMEOUT} s")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        loop = self._loop = _new_loop()
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        from .server import serve

        self._stop = asyncio.Event()
        async with serve(self.router, self.host, 0, codec=self.codec, **self.options) as server:
            self.port = server.port
            self._ready.set()
            await self._stop.wait()


class SyncClient:
    """A fastrpc client for synchronous code: its event loop runs in a thread of its
    own (uvloop where installed), so the connection stays alive between calls (it
    answers the server's keepalive PINGs); each method blocks until its answer is in."""

    def __init__(self, url: str, codec: str = "msgpack", **options: Any) -> None:
        from .client import connect

        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fastrpc-test-client", daemon=True)
        self._thread.start()
        try:
            self.peer: RpcPeer = self.run(connect(url, codec=codec, **options))
        except BaseException:
            self._stop_loop()
            raise

    def run(self, awaitable: Any) -> Any:
        """Run ``awaitable`` (e.g. ``peer.call(...)``, or any coroutine using ``peer``)
        on the client's loop to its end; its result, or its exception raised here."""

        async def main() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(main(), self._loop).result()

    def call(self, method: str, *args: Any, timeout: float | None = 10.0) -> Any:
        """``peer.call(method, *args)``: the result, or the remote error raised here."""
        return self.run(self.peer.call(method, *args, timeout=timeout))

    def notify(self, method: str, *args: Any) -> None:
        """``peer.notify(method, *args)``: queued on the client's loop, which writes it."""

        async def notify() -> None:
            self.peer.notify(method, *args)

        self.run(notify())

    def stream(self, method: str, *args: Any, timeout: float | None = 30.0) -> list[Any]:
        """Every item of ``peer.stream(method, *args)``, in order."""

        async def collect() -> list[Any]:
            async with asyncio.timeout(timeout):
                return [item async for item in self.peer.stream(method, *args)]

        return self.run(collect())  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the connection, then the client's loop and its thread."""
        if self._loop.is_closed():
            return
        try:
            self.run(self.peer.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        loop = self._loop

        async def wind_up() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_asyncgens()

        try:
            asyncio.run_coroutine_threadsafe(wind_up(), loop).result(START_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(START_TIMEOUT)
            if not self._thread.is_alive():
                loop.close()


@pytest.fixture
def fastrpc_router() -> Router:
    """The Router ``fastrpc_server`` serves: override this fixture in your conftest.py."""
    raise pytest.UsageError(
        "fastrpc_server needs a Router: define a fixture named fastrpc_router in your conftest.py "
        "(or test module) that returns your fastrpc.Router"
    )


@pytest.fixture
def fastrpc_codec() -> str:
    """The payload codec of ``fastrpc_server`` and ``fastrpc_client``: "msgpack" or "json"."""
    return "msgpack"


@pytest.fixture
def fastrpc_server_options() -> dict[str, Any]:
    """Extra keyword arguments for :func:`fastrpc.serve` (limits, compression, ...)."""
    return {}


@pytest.fixture
def fastrpc_client_options() -> dict[str, Any]:
    """Extra keyword arguments for :func:`fastrpc.connect`."""
    return {}


@pytest.fixture
def fastrpc_server(
    fastrpc_router: Router, fastrpc_codec: str, fastrpc_server_options: dict[str, Any]
) -> Iterator[LiveServer]:
    """A running fastrpc server on 127.0.0.1 serving ``fastrpc_router``."""
    server = LiveServer(fastrpc_router, fastrpc_codec, **fastrpc_server_options).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fastrpc_client(fastrpc_server: LiveServer, fastrpc_client_options: dict[str, Any]) -> Iterator[SyncClient]:
    """A :class:`SyncClient` connected to ``fastrpc_server`` with the same codec."""
    client = SyncClient(fastrpc_server.url, fastrpc_server.codec, **fastrpc_client_options)
    try:
        yield client
    finally:
        client.close()
