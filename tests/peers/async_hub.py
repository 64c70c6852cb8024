"""A single-threaded asyncio HTTP/1.1 hub for correlation tests: every request is served on
the one event-loop thread, so thread causality cannot say which inbound request caused an
outbound call.

Usage: async_hub.py --port P --downstream-port D [--copy-id path|query|body] [--hold MS]

For `GET /in/<id>` it waits --hold ms (so concurrent requests overlap), then calls
127.0.0.1:D over a fresh connection: `GET /down/<id>` (--copy-id path), `GET /down?ref=<id>`
(query), `POST /down` with the JSON body `{"ref": <id>}` (body), or plain `GET /down`;
every call carries the id in the header `x-test-rid` too (ground truth for tests); then it
waits --hold ms again (so every downstream call lies within every request: timing cannot
tell them apart) and answers 200. Raw sockets only: no dependency beyond the standard library.
"""
import argparse
import asyncio

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--downstream-port", type=int, required=True)
parser.add_argument("--copy-id", choices=["path", "query", "body"])
parser.add_argument("--hold", type=int, default=300)
args = parser.parse_args()


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b" ")[1].decode()


def downstream_request(rid):
    # x-test-rid is for the test's ground truth (the agent records it, never links by it).
    head = f"HTTP/1.1\r\nHost: downstream\r\nConnection: close\r\nx-test-rid: {rid}\r\n"
    if args.copy_id == "path":
        return f"GET /down/{rid} {head}\r\n".encode()
    if args.copy_id == "query":
        return f"GET /down?ref={rid} {head}\r\n".encode()
    if args.copy_id == "body":
        body = f'{{"ref": {rid}}}'
        return (f"POST /down {head}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
    return f"GET /down {head}\r\n".encode()


async def call_downstream(rid):
    reader, writer = await asyncio.open_connection("127.0.0.1", args.downstream_port)
    writer.write(downstream_request(rid))
    await writer.drain()
    await reader.read()
    writer.close()


async def handle(reader, writer):
    try:
        while True:
            path = await read_head(reader)
            rid = path.rsplit("/", 1)[-1]
            await asyncio.sleep(args.hold / 1000)
            await call_downstream(rid)
            await asyncio.sleep(args.hold / 1000)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


asyncio.run(main())
