"""Concurrent HTTP load: THREADS threads each GET http://HOST:PORT/call/<t>-<i> for i < N
(a new connection per request), checking the body echoes the id. Exits non-zero on any
failure. Prints the number of requests made.

Usage: http_load.py --port P --threads T --requests N
"""
import argparse
import sys
import threading
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--threads", type=int, default=8)
parser.add_argument("--requests", type=int, default=5)
args = parser.parse_args()

errors = []
done = [0]
lock = threading.Lock()


def worker(t):
    for i in range(args.requests):
        rid = f"{t}-{i}"
        try:
            with urllib.request.urlopen(f"http://{args.host}:{args.port}/call/{rid}", timeout=10) as r:
                body = r.read().decode()
            if body != rid:
                raise RuntimeError(f"body {body!r}")
            with lock:
                done[0] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append(f"{rid}: {e}")


threads = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
for th in threads:
    th.start()
for th in threads:
    th.join(timeout=60)
if errors or any(th.is_alive() for th in threads):
    sys.exit("failures: " + "; ".join(errors[:10]))
print(done[0])
