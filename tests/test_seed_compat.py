"""fastrpc and the seed's JSON protocol (jadujoel/ts-rpc), both directions, over real
sockets with JavaScript peers under Node (and Bun, when ``npm ci`` in tests/js got it):

* peers written to the seed's message shapes (tests/js/seed_peer.mjs) against a fastrpc
  server: welcome before speaking, heartbeats during a stream, plain messages, error
  replies, early StreamEnd / StreamError, relay ``to`` routing; the seed's runner
  pattern (a peer that never speaks first) served by a handler that asks it;
* fastrpc's Python JSON client (``connect(url, protocol="json")``) against the seed's
  servers, reimplemented on the ``ws`` package from their wire behaviour: the relay
  (serve.ts, tests/js/seed_relay_server.mjs) and runServer() of examples/stream.ts
  (tests/js/seed_stream_server.mjs).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from typing import Any

import pytest
from _util import run

import fastrpc

NODE = shutil.which("node")
NPM = shutil.which("npm")
JS = os.path.join(os.path.dirname(__file__), "js")
CLIENT = os.path.join(JS, "seed_client.mjs")
BUN = os.path.join(JS, "node_modules", ".bin", "bun")
QUIET = {"keepalive_interval": None, "ws_ping_interval": None}


def _node_has_websocket() -> bool:
    if NODE is None:
        return False
    out = subprocess.run(
        [NODE, "--experimental-websocket", "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
        capture_output=True,
        timeout=30,
    )
    return out.returncode == 0


pytestmark = [
    pytest.mark.external,
    pytest.mark.skipif(not _node_has_websocket(), reason="needs Node.js with a built-in WebSocket"),
]


def _js_packages() -> None:
    """tests/js/node_modules (the ``ws`` package; Bun, optional): ``npm ci`` once."""
    if os.path.isdir(os.path.join(JS, "node_modules", "ws")):
        return
    if NPM is None:
        pytest.skip("needs npm to install tests/js/package-lock.json")
    subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, capture_output=True, timeout=300)


def runtimes() -> list[str]:
    """The JavaScript runtimes to run the seed's peers under: node, and bun if present."""
    return ["node", "bun"]


def js_command(runtime: str, script: str, *args: str) -> list[str]:
    path = os.path.join(JS, script)
    if runtime == "bun":
        _js_packages()
        if not os.access(BUN, os.X_OK):
            pytest.skip("Bun is not installed (tests/js: npm ci installs it where its package supports the platform)")
        return [BUN, path, *args]
    assert NODE is not None
    return [NODE, "--experimental-websocket", "--no-warnings", path, *args]


async def run_js(cmd: list[str], timeout: float = 20) -> Any:
    """Run a JavaScript peer to its end; the JSON object its last line prints."""
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


class JsServer:
    """A JavaScript server (tests/js/seed_*_server.mjs) in a child process, stopped by
    its pid on exit."""

    def __init__(self, script: str, env: dict[str, str] | None = None) -> None:
        self.script = script
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def __aenter__(self) -> JsServer:
        _js_packages()
        self.proc = await asyncio.create_subprocess_exec(
            *js_command("node", self.script),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **(self.env or {})},
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        assert line.startswith(b"LISTENING "), line
        self.port = int(line.split()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


def make_router(received: list[object]) -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method("requestData")
    async def request_data(n: int) -> dict[str, object]:
        async def feed():
            for i in range(n):
                yield {"seq": i}

        sid = await fastrpc.current_peer().send_stream(feed())
        return {"streamId": sid}

    @router.method
    async def failing() -> dict[str, object]:
        async def feed():
            yield 1
            raise ValueError("Something went wrong")

        return {"streamId": await fastrpc.current_peer().send_stream(feed())}

    @router.method("sumUpload")
    async def sum_upload(sid: str) -> int:
        _, stream = fastrpc.current_peer().receive_stream(sid)
        total = 0
        async for x in stream:
            received.append(x)
            total += x
        return total

    return router


def test_seed_json_client_calls_and_streams() -> None:
    received: list[object] = []

    async def main() -> dict[str, object]:
        async with fastrpc.serve(make_router(received), "127.0.0.1", 0) as server:
            proc = await asyncio.create_subprocess_exec(
                NODE,
                "--experimental-websocket",
                "--no-warnings",
                CLIENT,
                server.url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()
            # A fastrpc client still works on the same server.
            async with fastrpc.connect(server.url) as peer:
                assert await peer.call("add", 1, 1) == 2
            return json.loads(out.decode().strip().splitlines()[-1])

    out = run(main(), timeout=60)
    assert "failure" not in out, out
    assert out["add"] == 5
    assert out["items"] == [{"seq": i} for i in range(5)]
    assert out["partial"] == [1]
    assert "Something went wrong" in out["streamError"]
    assert "nosuch" in out["missing"]
    assert out["uploaded"] == 6
    assert received == [1, 2, 3]


# ------------------------------------------- the seed's peers against a fastrpc server


def scenario_router(plain: list[Any]) -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method
    def failing() -> None:
        raise ValueError("no good")

    @router.method
    async def ticks(n: int, delay: float) -> dict[str, object]:
        async def feed() -> Any:
            for i in range(n):
                await asyncio.sleep(delay)
                yield i

        return {"streamId": await fastrpc.current_peer().send_stream(feed())}

    @router.method
    async def collect(sid: str) -> dict[str, object]:
        _, stream = fastrpc.current_peer().receive_stream(sid)
        items: list[Any] = []
        try:
            async for x in stream:
                items.append(x)
        except fastrpc.RemoteStreamError as exc:
            return {"items": items, "error": exc.message}
        return {"items": items, "error": None}

    @router.method("plain")
    def plain_messages() -> list[Any]:
        return plain

    @router.match
    def anything_else(data: Any) -> None:
        plain.append(data)  # the seed's send(): handed here, answered with nothing

    return router


@pytest.mark.parametrize("runtime", runtimes())
def test_seed_peers_against_a_fastrpc_server(runtime: str) -> None:
    plain: list[Any] = []

    async def main() -> Any:
        async with fastrpc.serve(scenario_router(plain), "127.0.0.1", 0, json_paths=("/seed",), **QUIET) as server:
            return await run_js(js_command(runtime, "seed_scenarios.mjs", server.url, server.url + "/seed"))

    out = run(main(), timeout=40)
    failures = {k: v for k, v in out.items() if isinstance(v, dict) and "failure" in v}
    assert not failures, failures
    # Greeted without speaking first, after json_wait (0.5 s), once.
    assert out["welcome"]["welcomes"] == 1 and out["welcome"]["waitedMs"] >= 400, out["welcome"]
    assert out["add"] == 5
    # Heartbeats every 40 ms while a 300 ms stream was in flight: answered, stream whole.
    hb = out["heartbeat"]
    assert hb["items"] == list(range(10)) and hb["pongs"] >= 3 and hb["echoed"] and hb["unknown"] == 0, hb
    assert out["plain"] == [{"note": "hello"}]
    err = out["error"]
    assert err["reply"] == {"type": "error", "message": "ValueError: no good"}, err
    assert err["rejected"] == "Invalid response data" and err["ok"] == 2, err
    early = out["earlyEnd"]
    assert early["empty"] == {"items": [], "error": None}, early
    assert early["failed"] == {"items": [], "error": "failed before its first item"}, early
    relay = out["relay"]
    assert relay["routed"] == {"echo": {"hello": 1}, "from": relay["aId"]} and relay["asked"] == 1, relay
    assert relay["missing"] == "Request timed out" and relay["errors"] == ["Target peer not found"], relay
    assert relay["welcomeMs"] < 400, relay  # json_paths: greeted at once
    assert out["closeCode"] == 1000


def test_seed_runner_is_served_by_a_handler_that_asks_it() -> None:
    # runner.ts never speaks: after json_wait the server greets it and its handler asks.
    asked: list[Any] = []

    async def handler(peer: Any) -> None:
        assert isinstance(peer, fastrpc.jsonmode.JsonPeer)
        asked.append((await peer.request({"type": "score"}, timeout=5)).data)
        asked.append((await peer.request({"type": "score"}, timeout=5)).data)
        asked.append((await peer.request({"type": "greet", "name": "fastrpc"}, timeout=5)).data)
        await peer.send({"type": "quiet"})  # the runner answers nothing: nobody waits
        asked.append((await peer.request({"type": "game"}, timeout=5)).data)

    async def main() -> Any:
        async with fastrpc.serve(handler, "127.0.0.1", 0, **QUIET) as server:
            return await run_js(js_command("node", "seed_runner.mjs", server.url))

    out = run(main(), timeout=30)
    assert asked == [
        {"type": "score", "score": 0},
        {"type": "score", "score": 1},
        {"type": "greet", "greeting": "Hello fastrpc!"},
        {"type": "unknown"},
    ]
    assert out["answered"] == ["score", "score", "greet", "quiet", "game"]
    assert out["code"] == 1000


# ------------------------------------- fastrpc's JSON client against the seed's servers


def test_python_json_client_through_the_seed_relay() -> None:
    async def main() -> None:
        async with JsServer("seed_relay_server.mjs") as relay:
            url = relay.url("/game")
            async with fastrpc.connect(url, protocol="json", **QUIET) as runner:
                seen: list[Any] = []

                def answer(data: Any) -> Any:
                    seen.append(data)
                    return {"type": "score", "score": len(seen)} if data.get("type") == "score" else None

                runner.match(answer)
                async with fastrpc.connect(url, protocol="json", **QUIET) as client:
                    assert client.client_id and runner.client_id and client.client_id != runner.client_id
                    assert await client.ping(5) >= 0  # the relay answers heartbeats
                    # No `to`: the relay broadcasts on the topic; the answer comes back by `to`.
                    assert (await client.request({"type": "score"}, timeout=5)).data == {"type": "score", "score": 1}
                    # `to`: routed to that client only.
                    reply = await client.request({"type": "score"}, to=runner.client_id, timeout=5)
                    assert reply.data == {"type": "score", "score": 2}
                    # A plain message (the seed's send()): the runner gets it, answers nothing.
                    await client.send({"type": "note"})
                    # An unknown `to`: the relay's error fails the call at once.
                    with pytest.raises(fastrpc.RemoteError, match="Target peer not found"):
                        await client.request({"type": "score"}, to="nobody", timeout=5)

                    # A stream through the relay (broadcast on the topic).
                    async def feed() -> Any:
                        for i in range(5):
                            yield {"i": i}

                    _, incoming = runner.receive_stream("s-1")
                    await client.send_stream(feed(), "s-1")
                    assert [x async for x in incoming] == [{"i": i} for i in range(5)]
                    assert {"type": "note"} in seen

    run(main(), timeout=30)


def test_python_json_client_against_the_seed_stream_example_server() -> None:
    async def main() -> None:
        async with JsServer("seed_stream_server.mjs", {"DELAY_MS": "2"}) as server:
            async with fastrpc.connect(server.url("/ws"), protocol="json", **QUIET) as peer:
                assert peer.client_id  # the welcome came
                r = await peer.request({"method": "requestNumberStream"}, timeout=5)
                assert r.data["type"] == "number-stream"
                _, numbers = peer.receive_stream(r.data["streamId"])
                assert [x async for x in numbers] == list(range(1, 11))
                r = await peer.request({"method": "requestDataFeed"}, timeout=5)
                _, feed = peer.receive_stream(r.data["streamId"])
                assert [x["id"] async for x in feed] == [1, 2, 3, 4, 5]
                # Early abort of the log stream after 10 entries (what the example does):
                # the rest the server still sends is dropped, not held.
                r = await peer.request({"method": "requestLogStream"}, timeout=5)
                sid = r.data["streamId"]
                _, logs = peer.receive_stream(sid)
                got = []
                async for entry in logs:
                    got.append(entry["message"])
                    if len(got) == 10:
                        peer.close_receiving_stream(sid)
                        break
                assert got == [f"Log entry {i}" for i in range(1, 11)]
                # The seed's error reply: data {type: "error", message} raises.
                with pytest.raises(fastrpc.RemoteError, match="Invalid request format"):
                    await peer.request({"method": "nosuch"}, timeout=5)
                await asyncio.sleep(0.1)  # the log stream's remaining items and its end
                _, again = peer.receive_stream(sid)  # a new stream under that id: nothing held
                assert not again.items
            # The example serves /ws only.
            with pytest.raises(Exception):
                await fastrpc.connect(server.url("/other"), protocol="json", **QUIET)

    run(main(), timeout=30)
