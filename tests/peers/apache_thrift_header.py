"""Apache Thrift (the `thrift` package) over THeader, server and client, no generated code:
messages of Calculator.echo (tests/peers/thrift_service.thrift) written with the protocol
API directly.

Usage: apache_thrift_header.py server --port P
       apache_thrift_header.py client --port P [--protocol binary|compact] CALL...

The server is a TThreadedServer with THeaderProtocolFactory (binary or compact payloads,
answered in kind) whose processor answers `echo(text)` with `text`.
The client makes the calls in order over one connection; CALL is `text` or
`text@traceparent`: with `@`, the call's THeader carries that `traceparent` info header.
Seqids count up from 1. Prints `text -> reply` per call.
"""
import argparse
import sys

from thrift.protocol.THeaderProtocol import THeaderProtocol, THeaderProtocolFactory
from thrift.server.TServer import TThreadedServer
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport import TSocket, TTransport
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID

parser = argparse.ArgumentParser()
parser.add_argument("role", choices=["server", "client"])
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--protocol", choices=["binary", "compact"], default="binary")
parser.add_argument("calls", nargs="*")
args = parser.parse_intermixed_args()


def read_string_field(prot, wanted_id):
    """Reads a struct, returning its string field `wanted_id` (skips the rest)."""
    value = None
    prot.readStructBegin()
    while True:
        _, ftype, fid = prot.readFieldBegin()
        if ftype == TType.STOP:
            break
        if fid == wanted_id and ftype == TType.STRING:
            value = prot.readString()
        else:
            prot.skip(ftype)
        prot.readFieldEnd()
    prot.readStructEnd()
    return value


def write_string_struct(prot, name, field_id, value):
    prot.writeStructBegin(name)
    prot.writeFieldBegin("text" if field_id else "success", TType.STRING, field_id)
    prot.writeString(value)
    prot.writeFieldEnd()
    prot.writeFieldStop()
    prot.writeStructEnd()


class EchoProcessor:
    def process(self, iprot, oprot):
        name, mtype, seqid = iprot.readMessageBegin()
        text = read_string_field(iprot, 1)
        iprot.readMessageEnd()
        if mtype == TMessageType.ONEWAY:
            return
        if name != "echo":
            oprot.writeMessageBegin(name, TMessageType.EXCEPTION, seqid)
            TApplicationException(TApplicationException.UNKNOWN_METHOD, "unknown " + name).write(oprot)
        else:
            oprot.writeMessageBegin(name, TMessageType.REPLY, seqid)
            write_string_struct(oprot, "echo_result", 0, text or "")
        oprot.writeMessageEnd()
        oprot.trans.flush()


def serve():
    server = TThreadedServer(
        EchoProcessor(),
        TSocket.TServerSocket(host=args.host, port=args.port),
        TTransport.TTransportFactoryBase(),
        THeaderProtocolFactory(allowed_client_types=(THeaderClientType.HEADERS,)),
        daemon=True,
    )
    print(f"serving THeader on {args.port}", flush=True)
    server.serve()


def client():
    sock = TSocket.TSocket(args.host, args.port)
    sock.setTimeout(10000)
    sub = THeaderSubprotocolID.COMPACT if args.protocol == "compact" else THeaderSubprotocolID.BINARY
    prot = THeaderProtocol(sock, (THeaderClientType.HEADERS,), sub)
    prot.trans.open()
    for seqid, call in enumerate(args.calls, start=1):
        text, _, traceparent = call.partition("@")
        if traceparent:
            prot.set_header(b"traceparent", traceparent.encode())
        prot.writeMessageBegin("echo", TMessageType.CALL, seqid)
        write_string_struct(prot, "echo_args", 1, text)
        prot.writeMessageEnd()
        prot.trans.flush()
        name, mtype, rseqid = prot.readMessageBegin()
        if mtype == TMessageType.EXCEPTION:
            x = TApplicationException()
            x.read(prot)
            prot.readMessageEnd()
            sys.exit(f"{call}: server raised {x}")
        reply = read_string_field(prot, 0)
        prot.readMessageEnd()
        if rseqid != seqid or reply != text:
            sys.exit(f"{call}: bad reply seqid={rseqid} text={reply!r}")
        print(f"{text} -> {reply}", flush=True)
    prot.trans.close()


serve() if args.role == "server" else client()
