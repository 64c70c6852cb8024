"""thriftpy2 client of tests/peers/thrift_service.thrift: makes the given calls in order
on ONE connection and prints one line per call (`method -> result` or `method !! error`).

Usage: thriftpy_client.py --port P [--protocol binary|compact] [--transport buffered|framed]
                          [--multiplexed] CALL...

CALL is `method[:arg[:arg]]`: add:1:2, echo:text, divide:7:0, crash:why, notify:event,
events, greet:name (greet needs --multiplexed; with it, greet goes to the Greeter service
and every other method to Calculator, all over the same connection).
A declared CalcError or a TApplicationException is printed, not fatal; anything else
(a connection error, a timeout) exits non-zero.
"""
import argparse
import os
import sys

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.protocol.multiplex import TMultiplexedProtocol
from thriftpy2.thrift import TApplicationException, TClient
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory, TSocket

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--protocol", choices=["binary", "compact"], default="binary")
parser.add_argument("--transport", choices=["buffered", "framed"], default="buffered")
parser.add_argument("--multiplexed", action="store_true")
parser.add_argument("calls", nargs="+")
args = parser.parse_args()

svc = thriftpy2.load(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "thrift_service.thrift"), module_name="thrift_service_thrift")

proto_factory = TCompactProtocolFactory() if args.protocol == "compact" else TBinaryProtocolFactory()
trans_factory = TFramedTransportFactory() if args.transport == "framed" else TBufferedTransportFactory()

sock = TSocket(args.host, args.port, socket_timeout=10000, connect_timeout=5000)
transport = trans_factory.get_transport(sock)
proto = proto_factory.get_protocol(transport)
transport.open()
if args.multiplexed:
    calc = TClient(svc.Calculator, TMultiplexedProtocol(proto, "Calculator"))
    greeter = TClient(svc.Greeter, TMultiplexedProtocol(proto, "Greeter"))
else:
    calc = TClient(svc.Calculator, proto)
    greeter = None


def convert(method, raw):
    if method in ("add", "divide"):
        return [int(x) for x in raw]
    return raw


for call in args.calls:
    method, *raw = call.split(":")
    client = greeter if method == "greet" else calc
    if client is None:
        sys.exit(f"{method} needs --multiplexed")
    try:
        result = getattr(client, method)(*convert(method, raw))
        print(f"{call} -> {result!r}", flush=True)
    except svc.CalcError as e:
        print(f"{call} !! CalcError({e.message!r}, {e.code})", flush=True)
    except TApplicationException as e:
        print(f"{call} !! TApplicationException({e.type}, {e.message!r})", flush=True)
transport.close()
