"""Raw-socket HTTP/1.1 client for capture tests: exercises syscalls that requests/curl
do not (sendmsg/recvmsg with several iovecs) and connections opened before the agent.

Usage: socket_client.py HOST PORT [--iov] [--wait-for FILE] PATH...

Sends one GET per PATH on a single keep-alive connection and reads each response. With
--iov the request head is sent with sendmsg() as three iovecs and responses are read with
recvmsg(). With --wait-for, the first request is sent at once, then the client waits (at
most 60 s) until FILE exists before sending the others. Exits 1 on any failure.
"""
import argparse
import os
import socket
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("host")
parser.add_argument("port", type=int)
parser.add_argument("paths", nargs="+")
parser.add_argument("--iov", action="store_true")
parser.add_argument("--wait-for", default=None)
args = parser.parse_args()

family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
sock = socket.socket(family, socket.SOCK_STREAM)
sock.settimeout(15)
sock.connect((args.host, args.port))


def send(path):
    head = [f"GET {path} HTTP/1.1\r\n".encode(), f"Host: {args.host}\r\n".encode(), b"\r\n"]
    if args.iov:
        sock.sendmsg(head)
    else:
        sock.sendall(b"".join(head))


def recv_some():
    if args.iov:
        data, _, _, _ = sock.recvmsg(65536)
        return data
    return sock.recv(65536)


def read_response():
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = recv_some()
        if not chunk:
            sys.exit("connection closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = recv_some()
        if not chunk:
            sys.exit("connection closed inside the body")
        body += chunk
    status = int(head.split(b" ")[1])
    if status >= 400:
        sys.exit(f"HTTP {status}")


for i, path in enumerate(args.paths):
    if i == 1 and args.wait_for:
        deadline = time.time() + 60
        while not os.path.exists(args.wait_for):
            if time.time() > deadline:
                sys.exit(f"{args.wait_for} never appeared")
            time.sleep(0.05)
    send(path)
    read_response()
    if i == 0 and args.wait_for:
        print("first exchange done", flush=True)
sock.close()
