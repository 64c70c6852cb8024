"""thriftpy2 server of tests/peers/thrift_service.thrift for the end-to-end tests.

Usage: thriftpy_server.py --port P [--protocol binary|compact] [--transport buffered|framed]
                          [--multiplexed]

Thread per connection (thriftpy2's TThreadedServer, as made by make_server), no idle
timeout (the Flask gateway keeps pooled connections open between requests).
--multiplexed serves Calculator and Greeter behind a TMultiplexedProcessor.
--tagged serves Calculator under ANY multiplexed service name (`<tag>:method`): a client can
tag each call (the Flask gateway tags it with the HTTP request's id) and the tag shows up
in the span name.
"""
import argparse
import os
import threading

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.rpc import make_server
from thriftpy2.server import TThreadedServer
from thriftpy2.thrift import TApplicationException, TMultiplexedProcessor, TProcessor
from thriftpy2.transport import (TBufferedTransportFactory, TFramedTransportFactory,
                                 TServerSocket)

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--protocol", choices=["binary", "compact"], default="binary")
parser.add_argument("--transport", choices=["buffered", "framed"], default="buffered")
parser.add_argument("--multiplexed", action="store_true")
parser.add_argument("--tagged", action="store_true")
args = parser.parse_args()

svc = thriftpy2.load(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "thrift_service.thrift"), module_name="thrift_service_thrift")


class Calculator:
    def __init__(self):
        self.lock = threading.Lock()
        self.seen = []

    def add(self, a, b):
        return a + b

    def echo(self, text):
        return text

    def divide(self, a, b):
        if b == 0:
            raise svc.CalcError(message="division by zero", code=22)
        return a // b

    def crash(self, why):
        raise TApplicationException(TApplicationException.INTERNAL_ERROR, "crash: " + why)

    def notify(self, event):
        with self.lock:
            self.seen.append(event)

    def events(self):
        with self.lock:
            return ",".join(self.seen)


class Greeter:
    def greet(self, name):
        return "hello " + name


proto = TCompactProtocolFactory() if args.protocol == "compact" else TBinaryProtocolFactory()
trans = TFramedTransportFactory() if args.transport == "framed" else TBufferedTransportFactory()

class AnyService(dict):
    """Every service name maps to the one Calculator processor."""

    def __init__(self, processor):
        super().__init__()
        self.processor = processor

    def __contains__(self, name):
        return True

    def __getitem__(self, name):
        return self.processor


if args.tagged:
    mux = TMultiplexedProcessor()
    mux.processors = AnyService(TProcessor(svc.Calculator, Calculator()))
    server = TThreadedServer(mux, TServerSocket(host=args.host, port=args.port, client_timeout=None),
                             iprot_factory=proto, itrans_factory=trans)
elif args.multiplexed:
    mux = TMultiplexedProcessor()
    mux.register_processor("Calculator", TProcessor(svc.Calculator, Calculator()))
    mux.register_processor("Greeter", TProcessor(svc.Greeter, Greeter()))
    server = TThreadedServer(mux, TServerSocket(host=args.host, port=args.port, client_timeout=None),
                             iprot_factory=proto, itrans_factory=trans)
else:
    server = make_server(svc.Calculator, Calculator(), host=args.host, port=args.port,
                         proto_factory=proto, trans_factory=trans, client_timeout=None)
print(f"serving {args.protocol}/{args.transport} multiplexed={args.multiplexed} on {args.port}",
      flush=True)
server.serve()
