"""The pytest plugin shipped with fastrpc (src/fastrpc/pytest_plugin.py), run the way a
user runs it: pytester writes a conftest and tests into a temp dir and runs pytest
there, with the plugin loaded through its ``pytest11`` entry point. The servers are
real (127.0.0.1, a free port), started by the fixtures and stopped after each test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import fastrpc

pytest_plugins = ["pytester"]

CONFTEST = """
import fastrpc, pytest

router = fastrpc.Router()

@router.method
async def add(a, b):
    return a + b

@router.method
async def ticks(n):
    for i in range(n):
        yield {"seq": i}

@router.method
async def fail():
    raise ValueError("boom")

@pytest.fixture
def fastrpc_router():
    return router
"""


# Warnings are errors, as in this project; with pytest-asyncio installed (a common
# neighbour) its loop-scope option must be set, and without it that name is unknown.
INI = """
[pytest]
filterwarnings =
    error
    ignore:Unknown config option. asyncio_default_fixture_loop_scope:pytest.PytestConfigWarning
asyncio_default_fixture_loop_scope = function
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A subprocess: the plugin is found through the installed entry point, as for a user,
    # and its threads and loops cannot leak into this process.
    pytester.makeini(INI)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=60)


@pytest.mark.timeout(90)
def test_call_stream_both_codecs_and_errors(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import fastrpc, pytest

        @pytest.mark.parametrize("fastrpc_codec", ["msgpack", "json"])
        def test_client(fastrpc_server, fastrpc_client, fastrpc_codec):
            assert fastrpc_server.url.startswith("ws://127.0.0.1:") and fastrpc_server.port > 0
            assert fastrpc_server.codec == fastrpc_codec
            assert fastrpc_client.call("add", 1, 2) == 3
            assert fastrpc_client.stream("ticks", 3) == [{"seq": 0}, {"seq": 1}, {"seq": 2}]
            with pytest.raises(fastrpc.RemoteError, match="boom"):
                fastrpc_client.call("fail")
            assert fastrpc_client.run(fastrpc_client.peer.call("add", "a", "b")) == "ab"

        def test_async_user(fastrpc_server):
            async def main():
                async with fastrpc_server.connect() as peer:
                    return await peer.call("add", 2, 3, timeout=5)
            assert fastrpc.run(main()) == 5
        """
    )
    result = run(pytester, "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_client?msgpack? PASSED*", "*test_client?json? PASSED*"])


@pytest.mark.timeout(60)
def test_server_is_stopped_after_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import socket, threading
        seen = {}

        def test_serve(fastrpc_server, fastrpc_client):
            assert fastrpc_client.call("add", 1, 1) == 2
            seen["port"] = fastrpc_server.port
            seen["threads"] = [t.name for t in threading.enumerate()]

        def test_after():
            assert "fastrpc-test-server" in seen["threads"]
            assert not [t for t in threading.enumerate() if t.name == "fastrpc-test-server"]
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", seen["port"])) != 0, "still listening"
        """
    )
    run(pytester).assert_outcomes(passed=2)


@pytest.mark.timeout(60)
def test_passive_until_requested(pytester: pytest.Pytester) -> None:
    """Registered (its fixtures listed, ``-p no:fastrpc`` removes them), but a session
    that uses none of them starts no thread and no event loop."""
    pytester.makepyfile(
        """
        import sys, threading

        def test_plain():
            assert "fastrpc.pytest_plugin" in sys.modules
            assert [t.name for t in threading.enumerate()] == ["MainThread"]
        """
    )
    run(pytester).assert_outcomes(passed=1)
    fixtures = run(pytester, "--fixtures")
    for name in ("fastrpc_router", "fastrpc_codec", "fastrpc_server", "fastrpc_client"):
        assert f"{name} -- " in fixtures.stdout.str(), name
    off = run(pytester, "-p", "no:fastrpc", "--fixtures")
    assert "fastrpc_server" not in off.stdout.str()


@pytest.mark.timeout(60)
def test_clear_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_no_router="""
        def test_no_router(fastrpc_server):
            pass
        """,
        test_bad_codec="""
        import fastrpc, pytest

        @pytest.fixture
        def fastrpc_router():
            return fastrpc.Router()

        @pytest.mark.parametrize("fastrpc_codec", ["yaml"])
        def test_bad_codec(fastrpc_server):
            pass
        """,
    )
    result = run(pytester)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*define a fixture named fastrpc_router*"])
    result.stdout.fnmatch_lines(["*fastrpc_codec must be one of*yaml*"])


@pytest.mark.timeout(90)
def test_example_project(pytester: pytest.Pytester) -> None:
    """examples/pytest_plugin runs as its own project (benchmarks timed once each here;
    tools/run_plugin_example.sh runs it for real, outside the repository)."""
    example = Path(__file__).resolve().parent.parent / "examples" / "pytest_plugin"
    if not example.is_dir():
        pytest.skip("needs the repository's examples/ folder")
    for path in example.iterdir():
        if path.is_file():
            shutil.copy(path, pytester.path / path.name)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-disable", timeout=80)
    result.assert_outcomes(passed=12)


def test_the_sync_client_stays_connected_while_the_test_does_something_else() -> None:
    # SyncClient's loop ran only inside a call: a test busy elsewhere for longer than
    # the server's keepalive interval + timeout lost its connection (ConnectionClosed
    # at the next call). Its loop now runs in a thread of its own.
    import time

    from fastrpc.pytest_plugin import LiveServer, SyncClient

    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    server = LiveServer(router, keepalive_interval=0.1, keepalive_timeout=0.1).start()
    try:
        client = SyncClient(server.url)
        try:
            assert client.call("add", 1, 2) == 3
            time.sleep(1.0)  # 5 keepalive rounds, the client's loop not called into
            assert client.call("add", 2, 3) == 5
            client.notify("add", 1, 1)
            assert client.stream("add", 1, 2) == [3]
        finally:
            client.close()
    finally:
        server.stop()
