//! `rust_http_server --bind ADDR:PORT`: a small std-only HTTP/1.1 server for
//! the end-to-end tests, so spans from a non-Python server are checked too.
//!
//! One thread per connection; requests are parsed one after another from a
//! buffered stream, so keep-alive and pipelined requests both work.
//! Routes: `/status/<code>` answers with that status, `/bytes/<n>` with an
//! `n`-byte body, anything else 200 with `ok <path>`. Request bodies with
//! `Content-Length` are read and discarded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let mut bind = "127.0.0.1:8080".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bind" => bind = args.next().expect("--bind needs ADDR:PORT"),
            other => {
                eprintln!("rust_http_server: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind(&bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    eprintln!("rust_http_server listening on {bind}");
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                std::thread::spawn(move || {
                    if let Err(e) = serve(s) {
                        eprintln!("connection error: {e}");
                    }
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(()); // peer closed between requests
        }
        let line = line.trim_end();
        if line.is_empty() {
            continue; // tolerate stray CRLF between requests
        }
        let mut parts = line.split_whitespace();
        let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v)) => (m.to_string(), t.to_string(), v.to_string()),
            _ => {
                writer.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                return Ok(());
            }
        };
        let mut content_length = 0usize;
        let mut close = version == "HTTP/1.0";
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    content_length = v.parse().unwrap_or(0);
                } else if k == "connection" {
                    close = v.eq_ignore_ascii_case("close");
                }
            }
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body)?;

        let path = target.split('?').next().unwrap_or("/");
        let (status, payload): (u16, Vec<u8>) = if let Some(code) = path.strip_prefix("/status/") {
            let code = code.parse().unwrap_or(400);
            (code, format!("status {code}\n").into_bytes())
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            let n: usize = n.parse().unwrap_or(0);
            (200, vec![b'x'; n])
        } else {
            (200, format!("ok {method} {path}\n").into_bytes())
        };
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
            reason(status),
            payload.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        let mut out = head.into_bytes();
        if method != "HEAD" {
            out.extend_from_slice(&payload);
        }
        writer.write_all(&out)?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}
