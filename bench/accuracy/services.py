"""Scenario services for `cargo xtask accuracy` (uninstrumented from the tracer's view).

Ground truth is built in: every request path is `/<hop>/<rid>` where `rid` is the integer id
of the root request, and every service copies the rid into the paths of the calls it makes.
The Thrift front logs which pooled connection (server port) carried each rid's call, and when.

With --noid the calls a service makes go to the fixed path `/<hop>` (no digit anywhere in the
path or query, so the tracer finds no id to match on) and carry the rid in the request header
`x-bench-rid` instead (the agent records it as `http.request.header.x-bench-rid`). A service
takes the rid from its inbound path `/<hop>/<rid>` (the load generator's root request) or,
for `/<hop>`, from the inbound header.

With --number (the FizzBuzz of SCENARIOS.md) the load generator sends `{"number": n}` and
every service sends the `number` of the request it serves in the bodies of its calls
(otherwise all bodies are the same `{"number": 15}`). With `--number ordinal` (or bare
`--number`) n is the request's ordinal in its level (1..count: concurrent requests carry
different numbers); with `--number random` it is drawn from 1..100 (seeded by the rid), so
concurrent requests now and then carry the same number, as real FizzBuzz clients do.

Roles (one per process):
  leaf          Flask on waitress (keep-alive): POST /<hop>/<rid> (or /<hop>) -> small JSON.
  relay         Flask on waitress: POST /<hop>/<rid> (or /<hop>) calls each --down hop=port in
                turn with a thread-local requests.Session, then answers.
                The Flask roles (leaf, relay, thrift-front) take --server: `waitress` (default;
                an I/O thread reads requests and hands them to a pool of --threads workers) or
                `threaded` (http.server.ThreadingHTTPServer, HTTP/1.1 keep-alive: a thread per
                connection reads each request, runs the handler, so makes the calls, and
                writes the answer).
  hub-sync      FastAPI, `def` endpoint (thread pool), uvicorn one worker: like relay.
  hub-async     FastAPI, `async def`, uvicorn one worker, one shared httpx.AsyncClient: all
                --down calls issued concurrently with asyncio.gather on the event loop.
  thrift-front  Flask on waitress: POST /tq/<rid> calls Work.work(rid) over a pool of
                long-lived thriftpy2 connections, one to each --thrift-port (replicas), and
                appends `rid port t_before_ns t_after_ns` (CLOCK_REALTIME) to --log.
  thrift-server thriftpy2 make_server (thread per connection), one listener per --thrift-port.
  loadgen       POSTs /<hop>/<rid> for rid = base+1 .. base+N with --concurrency threads, each
                with its own keep-alive requests.Session; prints one JSON summary line.
                With --serve it runs one level per stdin line `base count concurrency`
                (so that it exists, and its pid is known, before the agent starts).

--propagate w3c|b3 makes relay/hub-sync/loadgen behave like instrumented services: each
outgoing request carries the incoming trace id and a span id of the caller's own (not
exported) span, derived from (hop, rid) so the benchmark can recompute it:
  trace id (128 bit) = TRACE_HI || rid, B3 uses 64 bits: TRACE_HI | rid
  span id  (64 bit)  = hop_code(hop) << 48 | rid
"""
import argparse
import asyncio
import json
import logging
import os
import queue
import random
import sys
import threading
import time

HOPS = ["hub", "fizz", "buzz", "a", "b", "c", "tq"]
TRACE_HI = 0x00ACC0DE00000000
RID_HEADER = "x-bench-rid"


def hop_code(hop):
    return HOPS.index(hop) + 1


def trace_w3c(rid):
    return f"{TRACE_HI:016x}{rid:016x}"


def trace_b3(rid):
    return f"{TRACE_HI | rid:016x}"


def span_id(hop, rid):
    return f"{(hop_code(hop) << 48) | rid:016x}"


def context_headers(mode, hop, rid):
    """Headers an instrumented caller sends on its call to `hop` for root request `rid`."""
    if mode == "w3c":
        return {"traceparent": f"00-{trace_w3c(rid)}-{span_id(hop, rid)}-01"}
    if mode == "b3":
        return {
            "X-B3-TraceId": trace_b3(rid),
            "X-B3-SpanId": span_id(hop, rid),
            "X-B3-Sampled": "1",
        }
    return {}


def parse_down(items):
    out = []
    for item in items or []:
        hop, port = item.split("=")
        out.append((hop, int(port)))
    return out


parser = argparse.ArgumentParser()
parser.add_argument("role")
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--down", action="append", help="hop=port, called in order")
parser.add_argument("--propagate", default="none", choices=["none", "w3c", "b3"])
parser.add_argument("--noid", action="store_true",
                    help="outgoing calls to /<hop> with the rid in the x-bench-rid header")
parser.add_argument("--number", nargs="?", const="ordinal", choices=["ordinal", "random"],
                    help="loadgen: body number = the ordinal, or random in 1..100; callers: "
                         "forward the inbound number")
parser.add_argument("--threads", type=int, default=16)
parser.add_argument("--server", default="waitress", choices=["waitress", "threaded"],
                    help="Flask roles: waitress (I/O thread + worker pool) or threaded "
                         "(ThreadingHTTPServer, a thread per connection)")
parser.add_argument("--thrift-port", type=int, action="append")
parser.add_argument("--log")
# loadgen
parser.add_argument("--hop")
parser.add_argument("--base", type=int, default=0)
parser.add_argument("--count", type=int, default=0)
parser.add_argument("--concurrency", type=int, default=1)
parser.add_argument("--serve", action="store_true")
args = parser.parse_args()
logging.basicConfig(level=logging.WARNING)

BODY = {"number": 15}


def number_body(ordinal, rid):
    """The load generator's body for root request `rid`, the `ordinal`-th of its level."""
    if args.number == "random":
        return {"number": random.Random(rid).randint(1, 100)}
    return {"number": ordinal}


def body_for(inbound):
    """Body of a call made while serving a request whose JSON body was `inbound`."""
    if args.number and isinstance(inbound, dict) and "number" in inbound:
        return {"number": inbound["number"]}
    return BODY


def serve_flask(app):
    if args.server == "threaded":
        serve_threaded(app)
        return
    import waitress

    waitress.serve(app, host="127.0.0.1", port=args.port, threads=args.threads,
                   connection_limit=256, channel_timeout=60, _quiet=True)


def serve_threaded(app):
    """Serves the WSGI `app` with a thread per connection (HTTP/1.1 keep-alive): the thread
    that reads a request runs the handler (so makes its calls) and writes the answer.

    http.server.ThreadingHTTPServer with a minimal WSGI adapter, not werkzeug's threaded
    server: werkzeug (3.1) answers every request with `Connection: close`, which would make
    each request a new connection and a new thread.
    """
    import io
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import unquote

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            path, _, query = self.path.partition("?")
            environ = {
                "REQUEST_METHOD": self.command,
                "SCRIPT_NAME": "",
                "PATH_INFO": unquote(path),
                "QUERY_STRING": query,
                "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": str(self.server.server_port),
                "SERVER_PROTOCOL": self.request_version,
                "REMOTE_ADDR": self.client_address[0],
                "CONTENT_LENGTH": str(length),
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "wsgi.version": (1, 0),
                "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(body),
                "wsgi.errors": sys.stderr,
                "wsgi.multithread": True,
                "wsgi.multiprocess": False,
                "wsgi.run_once": False,
            }
            for key, value in self.headers.items():
                key = key.upper().replace("-", "_")
                if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                    environ["HTTP_" + key] = value
            started = []

            def start_response(status, headers, exc_info=None):
                started[:] = [status, headers]

            result = app(environ, start_response)
            try:
                out = b"".join(result)
            finally:
                getattr(result, "close", lambda: None)()
            status, headers = started
            code, _, reason = status.partition(" ")
            # Status line, headers and body in one write.
            head = [f"HTTP/1.1 {code} {reason}"]
            head += [f"{k}: {v}" for k, v in headers if k.lower() != "content-length"]
            head.append(f"Content-Length: {len(out)}")
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + out)

        do_GET = do_POST

        def log_message(self, *_):
            pass  # no access log line per request

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # all load generator connections arrive at once

    Server(("127.0.0.1", args.port), Handler).serve_forever()


def flask_app(handler):
    from flask import Flask, jsonify, request

    app = Flask(args.role)

    @app.post("/<hop>/<int:rid>")
    def route(hop, rid):
        return jsonify(handler(hop, rid, request.get_json(silent=True)))

    @app.post("/<hop>")
    def route_noid(hop):
        return jsonify(handler(hop, header_rid(request.headers), request.get_json(silent=True)))

    return app


def header_rid(headers):
    """The rid of a `/<hop>` request (--noid callers send it in a header)."""
    return int(headers[RID_HEADER])


def down_call(hop, port, rid):
    """URL and headers of the call to `hop` for root request `rid`."""
    headers = context_headers(args.propagate, hop, rid)
    if args.noid:
        return f"http://127.0.0.1:{port}/{hop}", {**headers, RID_HEADER: str(rid)}
    return f"http://127.0.0.1:{port}/{hop}/{rid}", headers


_local = threading.local()


def session():
    import requests

    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
    return s


def call_down_sync(rid, inbound):
    answers = {}
    for hop, port in parse_down(args.down):
        url, headers = down_call(hop, port, rid)
        r = session().post(url, json=body_for(inbound), headers=headers, timeout=30)
        r.raise_for_status()
        answers[hop] = r.json()
    return answers


def main():
    role = args.role
    if role == "leaf":
        serve_flask(flask_app(lambda hop, rid, _: {"hop": hop, "rid": rid, "fizz": rid % 3 == 0}))
    elif role == "relay":
        serve_flask(flask_app(lambda hop, rid, inbound: {"hop": hop,
                                                        "down": call_down_sync(rid, inbound)}))
    elif role in ("hub-sync", "hub-async"):
        import uvicorn
        from typing import Optional

        from fastapi import Body, FastAPI, Request

        app = FastAPI()
        if role == "hub-sync":
            @app.post("/{hop}/{rid}")
            def hub(hop: str, rid: int, body: Optional[dict] = Body(default=None)):
                return {"hop": hop, "down": call_down_sync(rid, body)}

            @app.post("/{hop}")
            def hub_noid(hop: str, request: Request, body: Optional[dict] = Body(default=None)):
                return hub(hop, header_rid(request.headers), body)
        else:
            import httpx

            client = {}

            @app.post("/{hop}/{rid}")
            async def hub(hop: str, rid: int, body: Optional[dict] = Body(default=None)):
                if "c" not in client:
                    client["c"] = httpx.AsyncClient(
                        timeout=30, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

                async def one(dhop, port):
                    url, headers = down_call(dhop, port, rid)
                    r = await client["c"].post(url, json=body_for(body), headers=headers)
                    r.raise_for_status()
                    return r.json()

                down = parse_down(args.down)
                res = await asyncio.gather(*(one(h, p) for h, p in down))
                return {"hop": hop, "down": res}

            @app.post("/{hop}")
            async def hub_noid(hop: str, request: Request,
                               body: Optional[dict] = Body(default=None)):
                return await hub(hop, header_rid(request.headers), body)
        uvicorn.run(app, host="127.0.0.1", port=args.port, workers=1, log_level="warning",
                    access_log=False)
    elif role in ("thrift-front", "thrift-server"):
        import thriftpy2

        work = thriftpy2.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "work.thrift"),
                              module_name="work_thrift")
        if role == "thrift-server":
            from thriftpy2.rpc import make_server

            class Handler:
                def work(self, rid):
                    time.sleep(0.001)
                    return "done " + rid

            servers = [make_server(work.Work, Handler(), "127.0.0.1", p, client_timeout=None)
                       for p in args.thrift_port]
            for s in servers[1:]:
                threading.Thread(target=s.serve, daemon=True).start()
            servers[0].serve()
        else:
            from thriftpy2.rpc import make_client

            pool = queue.Queue()
            for p in args.thrift_port:
                pool.put((p, None))  # connected lazily, on first use, then kept
            log = open(args.log, "a", buffering=1)
            log_lock = threading.Lock()

            def handler(hop, rid, _inbound):
                port, client = pool.get()
                try:
                    if client is None:
                        client = make_client(work.Work, "127.0.0.1", port, timeout=30000)
                    t0 = time.time_ns()
                    answer = client.work(str(rid))
                    t1 = time.time_ns()
                finally:
                    pool.put((port, client))
                with log_lock:
                    log.write(f"{rid} {port} {t0} {t1}\n")
                return {"hop": hop, "answer": answer}

            serve_flask(flask_app(handler))
    elif role == "loadgen" and args.serve:
        print("ready", flush=True)
        for line in sys.stdin:
            base, count, concurrency = (int(w) for w in line.split())
            loadgen(base, count, concurrency)
    elif role == "loadgen":
        loadgen(args.base, args.count, args.concurrency)
    else:
        sys.exit(f"unknown role {role}")


def loadgen(base, count, concurrency):
    import requests

    port = args.port
    rids = queue.Queue()
    for i in range(1, count + 1):
        rids.put(base + i)
    failures = []
    lock = threading.Lock()

    def worker():
        s = requests.Session()
        while True:
            try:
                rid = rids.get_nowait()
            except queue.Empty:
                return
            try:
                body = number_body(rid - base, rid) if args.number else BODY
                r = s.post(f"http://127.0.0.1:{port}/{args.hop}/{rid}", json=body,
                           headers=context_headers(args.propagate, args.hop, rid), timeout=30)
                ok = r.status_code == 200
            except Exception as e:  # noqa: BLE001 - counted and reported
                ok = False
                r = e
            if not ok:
                with lock:
                    failures.append(rid)
                    if len(failures) <= 3:
                        print(f"rid {rid} failed: {r}", file=sys.stderr)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"sent": count, "failed": sorted(failures),
                      "seconds": round(time.monotonic() - t0, 3)}), flush=True)


if __name__ == "__main__":
    main()
