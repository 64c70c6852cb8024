//! `rust_thrift_client --connect ADDR:PORT [--protocol binary|compact]
//! [--transport buffered|framed] CALL...`: a Thrift client built on the Rust `thrift` crate
//! (no generated code: the messages of `tests/peers/thrift_service.thrift` are written with
//! the protocol API), so the end-to-end tests see a non-Python Thrift peer.
//!
//! The calls are made in order over one connection with sequence ids 1, 2, 3...; CALL is
//! `add:A:B`, `echo:TEXT`, `divide:A:B` (a declared `CalcError` is printed, not fatal) or
//! `notify:EVENT` (oneway). Prints `CALL -> result` per call; exits non-zero on anything
//! unexpected.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TFieldIdentifier, TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol,
    TStructIdentifier, TType,
};
use thrift::transport::{
    TBufferedReadTransport, TBufferedWriteTransport, TFramedReadTransport, TFramedWriteTransport,
};

type In = Box<dyn TInputProtocol>;
type Out = Box<dyn TOutputProtocol>;

fn main() {
    let mut connect = None;
    let (mut protocol, mut transport) = ("binary".to_string(), "buffered".to_string());
    let mut calls = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--connect" => connect = args.next(),
            "--protocol" => protocol = args.next().expect("--protocol needs a value"),
            "--transport" => transport = args.next().expect("--transport needs a value"),
            _ => calls.push(a),
        }
    }
    let addr = connect.expect("--connect ADDR:PORT is required");
    let stream = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let read_half = stream.try_clone().expect("clone the stream");
    let (reader, writer): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match transport.as_str() {
        "buffered" => (
            Box::new(TBufferedReadTransport::new(read_half)),
            Box::new(TBufferedWriteTransport::new(stream)),
        ),
        "framed" => (
            Box::new(TFramedReadTransport::new(read_half)),
            Box::new(TFramedWriteTransport::new(stream)),
        ),
        other => panic!("unknown transport {other}"),
    };
    let (mut i, mut o): (In, Out) = match protocol.as_str() {
        "binary" => (
            Box::new(TBinaryInputProtocol::new(reader, true)),
            Box::new(TBinaryOutputProtocol::new(writer, true)),
        ),
        "compact" => (
            Box::new(TCompactInputProtocol::new(reader)),
            Box::new(TCompactOutputProtocol::new(writer)),
        ),
        other => panic!("unknown protocol {other}"),
    };
    for (n, call) in calls.iter().enumerate() {
        let seqid = n as i32 + 1;
        match run(&mut i, &mut o, call, seqid) {
            Ok(result) => println!("{call} -> {result}"),
            Err(e) => {
                eprintln!("{call}: {e}");
                std::process::exit(1);
            }
        }
    }
}

enum Arg<'a> {
    I32(i32),
    Str(&'a str),
}

fn run(i: &mut In, o: &mut Out, call: &str, seqid: i32) -> thrift::Result<String> {
    let parts: Vec<&str> = call.split(':').collect();
    let int = |k: usize| -> i32 {
        parts
            .get(k)
            .and_then(|s| s.parse().ok())
            .expect("integer argument")
    };
    let text = |k: usize| -> &str { parts.get(k).copied().unwrap_or("") };
    let (method, args, oneway) = match parts[0] {
        "add" | "divide" => (
            parts[0],
            vec![(1, Arg::I32(int(1))), (2, Arg::I32(int(2)))],
            false,
        ),
        "echo" => ("echo", vec![(1, Arg::Str(text(1)))], false),
        "notify" => ("notify", vec![(1, Arg::Str(text(1)))], true),
        other => panic!("unknown method {other}"),
    };
    let kind = if oneway {
        TMessageType::OneWay
    } else {
        TMessageType::Call
    };
    o.write_message_begin(&TMessageIdentifier::new(method, kind, seqid))?;
    o.write_struct_begin(&TStructIdentifier::new(format!("{method}_args")))?;
    for (id, arg) in &args {
        match arg {
            Arg::I32(v) => {
                o.write_field_begin(&TFieldIdentifier::new("arg", TType::I32, *id))?;
                o.write_i32(*v)?;
            }
            Arg::Str(s) => {
                o.write_field_begin(&TFieldIdentifier::new("arg", TType::String, *id))?;
                o.write_string(s)?;
            }
        }
        o.write_field_end()?;
    }
    o.write_field_stop()?;
    o.write_struct_end()?;
    o.write_message_end()?;
    o.flush()?;
    if oneway {
        return Ok("(oneway)".into());
    }
    let head = i.read_message_begin()?;
    if head.sequence_number != seqid || head.name != method {
        return Err(format!("reply {head:?} to {method} seqid {seqid}").into());
    }
    if head.message_type == TMessageType::Exception {
        let e = thrift::Error::read_application_error_from_in_protocol(i.as_mut())?;
        i.read_message_end()?;
        return Ok(format!("TApplicationException {e:?}"));
    }
    // The result struct: field 0 is the return value, field 1 the declared CalcError.
    let mut result = String::from("(void)");
    i.read_struct_begin()?;
    loop {
        let field = i.read_field_begin()?;
        match (field.id, field.field_type) {
            (_, TType::Stop) => break,
            (Some(0), TType::I32) => result = i.read_i32()?.to_string(),
            (Some(0), TType::String) => result = i.read_string()?,
            (Some(1), TType::Struct) => {
                i.skip(TType::Struct)?;
                result = "CalcError".into();
            }
            (_, other) => i.skip(other)?,
        }
        i.read_field_end()?;
    }
    i.read_struct_end()?;
    i.read_message_end()?;
    Ok(result)
}
