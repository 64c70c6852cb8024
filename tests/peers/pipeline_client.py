"""Raw-socket HTTP/1.1 pipelining client: sends one GET per path in a single
sendall(), then reads the responses in order (Content-Length bodies).

Usage: pipeline_client.py HOST PORT PATH...

Prints one line per response: "<status> <path>". Exits 1 if a response is
missing or malformed.
"""
import socket
import sys

host, port, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if not paths:
    sys.exit("no paths given")

payload = b"".join(
    f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: pipeline-client/1\r\n\r\n".encode()
    for p in paths
)
sock = socket.create_connection((host, port), timeout=15)
sock.sendall(payload)
buf = b""


def fill():
    global buf
    chunk = sock.recv(65536)
    if not chunk:
        sys.exit(f"connection closed early; buffered {buf!r}")
    buf += chunk


for p in paths:
    while b"\r\n\r\n" not in buf:
        fill()
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(buf) < length:
        fill()
    buf = buf[length:]
    print(status, p)
sock.close()
