"""HTTP/1.1 keep-alive server for capture tests whose response body leaves through sendfile():
the head is written with writev() and the body, BODY_BYTES bytes of a file, with sendfile().
Requests are read with recv_into(). A connection is served until the client closes it, one
thread per connection.

Usage: sendfile_server.py PORT BODY_BYTES
"""
import os
import socket
import sys
import tempfile
import threading

port, body_bytes = int(sys.argv[1]), int(sys.argv[2])
body = tempfile.TemporaryFile()
body.write(b"x" * body_bytes)
body.flush()
head = (
    f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {body_bytes}\r\n\r\n"
).encode()


def serve(conn):
    with conn:
        buf = bytearray(65536)
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                n = conn.recv_into(buf)
                if n == 0:
                    return
                pending += bytes(buf[:n])
            _, _, pending = pending.partition(b"\r\n\r\n")
            os.writev(conn.fileno(), [head])
            sent = 0
            while sent < body_bytes:
                sent += os.sendfile(conn.fileno(), body.fileno(), sent, body_bytes - sent)


listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(64)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
