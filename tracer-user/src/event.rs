//! Decoding of ring-buffer records into events. First stage after the reader: checks length
//! and kind before reading, never trusts the bytes beyond what they say. A data event borrows
//! its payload from the ring buffer record (no copy, no allocation per event).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{
    AF_INET, AF_INET6, ConnEvent, DataEvent, EventHeader, ProcEvent, SockAddrs, conn_op,
    data_flags, direction, kind, proc_op, read_record,
};

use crate::protocol::Direction;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("data record says {said} payload bytes but carries {has}")]
    PayloadLength { said: usize, has: usize },
    #[error("unknown direction {0}")]
    Direction(u8),
}

/// The two endpoints of a TCP connection, seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Endpoints {
    /// `None` when the kernel could not read the socket's family.
    pub fn from_abi(a: &SockAddrs) -> Option<Self> {
        let ip = |bytes: &[u8; 16]| -> Option<IpAddr> {
            match a.family {
                AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                    bytes[0], bytes[1], bytes[2], bytes[3],
                ))),
                AF_INET6 => {
                    let v6 = Ipv6Addr::from(*bytes);
                    // Dual-stack sockets carry IPv4 peers as ::ffff:a.b.c.d; show them as IPv4.
                    Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
                }
                _ => None,
            }
        };
        Some(Self {
            local: SocketAddr::new(ip(&a.local_addr)?, a.local_port),
            remote: SocketAddr::new(ip(&a.remote_addr)?, a.remote_port),
        })
    }
}

/// One socket read or write.
#[derive(Clone, Copy, Debug)]
pub struct DataRecord<'a> {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_id: u64,
    pub enter_ns: u64,
    pub exit_ns: u64,
    /// Bytes the syscall moved.
    pub bytes: u64,
    pub direction: Direction,
    pub syscall: u8,
    /// The payload was not captured at all (e.g. `sendfile`).
    pub body_not_captured: bool,
    pub endpoints: Option<Endpoints>,
    /// The captured prefix.
    pub payload: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnOp {
    Connect,
    Accept,
    Close,
}

/// A connection life-cycle record.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    /// 0 for connect/accept (the id is assigned at the first I/O).
    pub conn_id: u64,
    pub ts_ns: u64,
    pub op: ConnOp,
    /// For connect/accept only the remote side is known.
    pub remote: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcOp {
    Exec,
    Exit,
}

/// A process the agent selects by its own rules called `exec` or exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcRecord {
    pub pid: u32,
    pub ts_ns: u64,
    pub op: ProcOp,
}

#[derive(Clone, Debug)]
pub enum Event<'a> {
    Data(DataRecord<'a>),
    Conn(ConnRecord),
    Process(ProcRecord),
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let header: EventHeader = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    match header.kind {
        kind::DATA => decode_data(bytes),
        kind::CONN => decode_conn(bytes),
        kind::PROC => decode_proc(bytes),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn decode_data(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let ev: DataEvent = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    let body = &bytes[size_of::<DataEvent>()..];
    let said = ev.captured as usize;
    if said > body.len() {
        return Err(DecodeError::PayloadLength {
            said,
            has: body.len(),
        });
    }
    let direction = match ev.direction {
        direction::EGRESS => Direction::Egress,
        direction::INGRESS => Direction::Ingress,
        other => return Err(DecodeError::Direction(other)),
    };
    Ok(Event::Data(DataRecord {
        pid: ev.header.pid,
        tid: ev.header.tid,
        fd: ev.header.fd,
        conn_id: ev.header.conn_id,
        enter_ns: ev.enter_ns,
        exit_ns: ev.exit_ns,
        bytes: ev.bytes.max(said as u64),
        direction,
        syscall: ev.syscall,
        body_not_captured: ev.flags & data_flags::BODY_NOT_CAPTURED != 0,
        endpoints: Endpoints::from_abi(&ev.addrs),
        payload: &body[..said],
    }))
}

fn decode_conn(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let ev: ConnEvent = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    let op = match ev.what {
        conn_op::CONNECT => ConnOp::Connect,
        conn_op::ACCEPT => ConnOp::Accept,
        conn_op::CLOSE => ConnOp::Close,
        other => return Err(DecodeError::UnknownKind(other as u32 | 0x100)),
    };
    Ok(Event::Conn(ConnRecord {
        pid: ev.header.pid,
        tid: ev.header.tid,
        fd: ev.header.fd,
        conn_id: ev.header.conn_id,
        ts_ns: ev.ts_ns,
        op,
        remote: Endpoints::from_abi(&ev.addrs).map(|e| e.remote),
    }))
}

fn decode_proc(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let ev: ProcEvent = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    let op = match ev.what {
        proc_op::EXEC => ProcOp::Exec,
        proc_op::EXIT => ProcOp::Exit,
        other => return Err(DecodeError::UnknownKind(other as u32 | 0x200)),
    };
    Ok(Event::Process(ProcRecord {
        pid: ev.header.pid,
        ts_ns: ev.ts_ns,
        op,
    }))
}

/// Encodes a data record the way the kernel side does (for replay tests and benchmarks).
pub fn encode_data(rec: &DataRecord<'_>) -> Vec<u8> {
    let mut addrs = SockAddrs::default();
    if let Some(e) = rec.endpoints {
        let put = |ip: IpAddr, out: &mut [u8; 16]| match ip {
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => *out = v6.octets(),
        };
        addrs.family = if e.local.is_ipv4() { AF_INET } else { AF_INET6 };
        put(e.local.ip(), &mut addrs.local_addr);
        put(e.remote.ip(), &mut addrs.remote_addr);
        addrs.local_port = e.local.port();
        addrs.remote_port = e.remote.port();
    }
    let ev = DataEvent {
        header: EventHeader {
            kind: kind::DATA,
            pid: rec.pid,
            tid: rec.tid,
            fd: rec.fd,
            conn_id: rec.conn_id,
        },
        enter_ns: rec.enter_ns,
        exit_ns: rec.exit_ns,
        bytes: rec.bytes,
        captured: rec.payload.len() as u32,
        direction: match rec.direction {
            Direction::Egress => direction::EGRESS,
            Direction::Ingress => direction::INGRESS,
        },
        syscall: rec.syscall,
        flags: if rec.body_not_captured {
            data_flags::BODY_NOT_CAPTURED
        } else {
            0
        },
        _pad: 0,
        addrs,
    };
    // SAFETY: DataEvent is an integer-only repr(C) struct; viewing it as bytes is sound.
    let head = unsafe {
        std::slice::from_raw_parts(&ev as *const DataEvent as *const u8, size_of::<DataEvent>())
    };
    let mut out = head.to_vec();
    out.extend_from_slice(rec.payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DataRecord<'static> {
        DataRecord {
            pid: 10,
            tid: 11,
            fd: 3,
            conn_id: 99,
            enter_ns: 1,
            exit_ns: 2,
            bytes: 100,
            direction: Direction::Ingress,
            syscall: tracer_common::syscall::READ,
            body_not_captured: false,
            endpoints: Some(Endpoints {
                local: "127.0.0.1:8080".parse().unwrap(),
                remote: "127.0.0.1:5555".parse().unwrap(),
            }),
            payload: b"GET / HTTP/1.1\r\n",
        }
    }

    #[test]
    fn round_trips_a_data_record() {
        let bytes = encode_data(&sample());
        let Ok(Event::Data(d)) = decode(&bytes) else {
            panic!("not data")
        };
        assert_eq!(d.pid, 10);
        assert_eq!(d.bytes, 100);
        assert_eq!(d.payload, b"GET / HTTP/1.1\r\n");
        assert_eq!(d.endpoints.unwrap().local.port(), 8080);
    }

    #[test]
    fn rejects_short_and_lying_records() {
        let bytes = encode_data(&sample());
        assert_eq!(decode(&bytes[..10]).unwrap_err(), DecodeError::Short(10));
        let cut = &bytes[..bytes.len() - 4];
        assert!(matches!(
            decode(cut),
            Err(DecodeError::PayloadLength { .. })
        ));
        let mut bad = bytes.clone();
        bad[0] = 77;
        assert_eq!(decode(&bad).unwrap_err(), DecodeError::UnknownKind(77));
    }

    #[test]
    fn decodes_process_records_and_rejects_unknown_ops() {
        let mut ev = ProcEvent {
            header: EventHeader {
                kind: kind::PROC,
                pid: 42,
                tid: 42,
                fd: 0,
                conn_id: 0,
            },
            ts_ns: 7,
            what: proc_op::EXIT,
            _pad: [0; 7],
        };
        let bytes = |ev: &ProcEvent| {
            // SAFETY: integer-only repr(C) struct viewed as bytes.
            unsafe {
                std::slice::from_raw_parts(
                    ev as *const ProcEvent as *const u8,
                    size_of::<ProcEvent>(),
                )
            }
            .to_vec()
        };
        let Ok(Event::Process(p)) = decode(&bytes(&ev)) else {
            panic!("not a process record")
        };
        assert_eq!(
            p,
            ProcRecord {
                pid: 42,
                ts_ns: 7,
                op: ProcOp::Exit
            }
        );
        ev.what = 9;
        assert_eq!(
            decode(&bytes(&ev)).unwrap_err(),
            DecodeError::UnknownKind(0x209)
        );
        assert_eq!(
            decode(&bytes(&ev)[..20]).unwrap_err(),
            DecodeError::Short(20)
        );
    }

    #[test]
    fn maps_v4_in_v6_addresses() {
        let mut a = SockAddrs {
            family: AF_INET6,
            local_port: 1,
            remote_port: 2,
            ..Default::default()
        };
        a.local_addr[10] = 0xff;
        a.local_addr[11] = 0xff;
        a.local_addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        a.remote_addr = Ipv6Addr::LOCALHOST.octets();
        let e = Endpoints::from_abi(&a).unwrap();
        assert_eq!(e.local.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(e.remote.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
}
