"""A TCP forwarder: `python tcp_forward.py LISTEN_HOST PORT TARGET_HOST TARGET_PORT` accepts
connections on LISTEN_HOST:PORT only and pipes each, bytes unchanged, to TARGET_HOST:TARGET_PORT.

`img2img stack up --host ADDR` runs it to give the loopback S3 API (which checks every request's
signature) at ADDR, and nothing else of the store: SeaweedFS's own S3 gateway (`weed s3`) would
also listen on ADDR with its gRPC port, whose IAM-cache service adds identities without any
authentication. Standard library only: it runs as a script, outside the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

CHUNK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _serve(listen: str, port: int, target: str, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()

    server = await asyncio.start_server(handle, listen, port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"forwarding {listen}:{port} -> {target}:{target_port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: tcp_forward.py LISTEN_HOST PORT TARGET_HOST TARGET_PORT", file=sys.stderr)
        return 2
    asyncio.run(_serve(argv[0], int(argv[1]), argv[2], int(argv[3])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
