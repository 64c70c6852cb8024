"""Raw-socket HTTP/1.1 client for capture tests: exercises the data syscalls that
requests/curl do not, and connections opened before the agent.

Usage: socket_client.py HOST PORT [--calls KIND] [--peek] [--wait-for FILE] PATH...

Sends one GET per PATH on a single keep-alive connection and reads each response. --calls
picks the syscalls: `send` (send/recv, i.e. sendto/recvfrom; the default), `rw` (write/read),
`vec` (writev/readv), `iov` (sendmsg/recvmsg) or `mmsg` (sendmmsg/recvmmsg, one message each);
the request head goes out as three buffers where the call takes several. With --peek every
receive is preceded by a MSG_PEEK receive of the same bytes. With --wait-for, the first
request is sent at once, then the client waits (at most 60 s) until FILE exists before
sending the others. Exits 1 on any failure.
"""
import argparse
import ctypes
import ctypes.util
import os
import socket
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("host")
parser.add_argument("port", type=int)
parser.add_argument("paths", nargs="+")
parser.add_argument("--calls", choices=["send", "rw", "vec", "iov", "mmsg"], default="send")
parser.add_argument("--peek", action="store_true")
parser.add_argument("--wait-for", default=None)
args = parser.parse_args()

family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
sock = socket.socket(family, socket.SOCK_STREAM)
sock.settimeout(15)
sock.connect((args.host, args.port))
if args.calls in ("rw", "vec", "mmsg"):
    # Raw calls on the fd need it blocking (a timeout makes it O_NONBLOCK); the test harness
    # bounds the client's run time.
    sock.settimeout(None)


libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


def mmsg(call, buffers):
    """One sendmmsg/recvmmsg of a single message made of `buffers`; returns its length."""
    iov = (Iovec * len(buffers))(
        *[Iovec(ctypes.cast(b, ctypes.c_void_p), ctypes.sizeof(b)) for b in buffers]
    )
    msg = Mmsghdr()
    msg.hdr.iov = iov
    msg.hdr.iovlen = len(buffers)
    if call == "send":
        n = libc.sendmmsg(sock.fileno(), ctypes.byref(msg), 1, 0)
    else:
        n = libc.recvmmsg(sock.fileno(), ctypes.byref(msg), 1, 0, None)
    if n != 1:
        sys.exit(f"{call}mmsg failed: {os.strerror(ctypes.get_errno())}")
    return msg.len


def send(path):
    head = [f"GET {path} HTTP/1.1\r\n".encode(), f"Host: {args.host}\r\n".encode(), b"\r\n"]
    if args.calls == "iov":
        sent = sock.sendmsg(head)
    elif args.calls == "vec":
        sent = os.writev(sock.fileno(), head)
    elif args.calls == "mmsg":
        sent = mmsg("send", [ctypes.create_string_buffer(h, len(h)) for h in head])
    elif args.calls == "rw":
        sent = os.write(sock.fileno(), b"".join(head))
    else:
        sent = sock.send(b"".join(head))
    if sent != sum(len(h) for h in head):
        sys.exit(f"short send: {sent}")


def recv_some():
    if args.peek:
        sock.recv(65536, socket.MSG_PEEK)
    if args.calls == "iov":
        data, _, _, _ = sock.recvmsg(65536)
        return data
    if args.calls == "vec":
        first, second = bytearray(100), bytearray(65436)
        n = os.readv(sock.fileno(), [first, second])
        return bytes((first + second)[:n])
    if args.calls == "mmsg":
        buf = ctypes.create_string_buffer(65536)
        n = mmsg("recv", [buf])
        return buf.raw[:n]
    if args.calls == "rw":
        return os.read(sock.fileno(), 65536)
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
