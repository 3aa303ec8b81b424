"""A fastrpc server in its own process, for the restart test: python _resume_server.py PORT"""

from __future__ import annotations

import sys

import fastrpc

router = fastrpc.Router()


@router.method
async def count(n: int):
    for i in range(n):
        yield i


@router.method
def add(a: int, b: int) -> int:
    return a + b


async def main(port: int) -> None:
    async with fastrpc.serve(router, "127.0.0.1", port, resume=True, keepalive_interval=None) as server:
        print("ready", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    fastrpc.run(main(int(sys.argv[1])))
