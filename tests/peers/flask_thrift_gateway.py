"""Flask gateway that calls a Thrift service through a small pool of long-lived connections.

Usage: flask_thrift_gateway.py --port P --thrift-port T [--pool N] [--eager]

GET /call/<rid>: takes a thriftpy2 client from a queue.Queue pool of N connections (opened
on first need, or all at startup with --eager, then kept open), calls Calculator.echo(rid) tagged with the multiplexed
service name `req-<rid>` (the server runs thriftpy_server.py --tagged), checks the reply is
rid, puts the client back and answers `rid`. The request id is thus in the URL path of the
HTTP spans and in the name of the Thrift spans.
Served by Werkzeug's threaded dev server: a thread per request, one request per connection.
"""
import argparse
import logging
import os
import queue
import threading

import thriftpy2
from flask import Flask
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.protocol.multiplex import TMultiplexedProtocol
from thriftpy2.thrift import TClient
from thriftpy2.transport import TBufferedTransportFactory, TSocket

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--thrift-port", type=int, required=True)
parser.add_argument("--pool", type=int, default=3)
parser.add_argument("--eager", action="store_true")
args = parser.parse_args()

svc = thriftpy2.load(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "thrift_service.thrift"), module_name="thrift_service_thrift")

app = Flask(__name__)
logging.getLogger("werkzeug").setLevel(logging.WARNING)

pool = queue.Queue()
opened = 0
opened_lock = threading.Lock()


def connect():
    transport = TBufferedTransportFactory().get_transport(
        TSocket(args.host, args.thrift_port, socket_timeout=10000, connect_timeout=5000))
    transport.open()
    return TBinaryProtocolFactory().get_protocol(transport)


def borrow():
    global opened
    try:
        return pool.get_nowait()
    except queue.Empty:
        pass
    with opened_lock:
        if opened < args.pool:
            opened += 1
            return connect()
    return pool.get(timeout=10)


@app.get("/call/<rid>")
def call(rid):
    proto = borrow()
    try:
        reply = TClient(svc.Calculator, TMultiplexedProtocol(proto, "req-" + rid)).echo(rid)
    finally:
        pool.put(proto)
    if reply != rid:
        return f"thrift answered {reply!r} to {rid!r}", 500
    return rid


@app.get("/pool")
def pool_size():
    return str(opened)


if args.eager:
    for _ in range(args.pool):
        pool.put(connect())
    opened = args.pool

app.run(host=args.host, port=args.port, threaded=True)
