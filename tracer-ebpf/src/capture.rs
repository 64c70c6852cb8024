//! Turning TCP socket I/O into a `DataEvent`: connection identity, the socket's
//! endpoints and the payload prefix, built in the per-CPU `SCRATCH` slot and copied into the
//! ring buffer with its exact length.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
    generated,
};
use tracer_common::{
    AF_INET, AF_INET6, AGENT_PORT_ANY_PEER, DataEvent, EventHeader, MAX_CAPTURE, MAX_IOVECS,
    SockAddrs, counter, kind,
};

use crate::maps::{
    AGENT_PORTS, CAPTURE_BYTES, CONNS, ConnState, EVENTS, Inflight, MUTED_CONNS, SCRATCH,
    SOCK_OFFSETS, bump, ignore, port_allowed, wakeup_flags,
};

/// Where the syscall's bytes live in user memory.
#[derive(Clone, Copy)]
pub enum Payload {
    /// One contiguous buffer.
    Buf(u64),
    /// An array of `count` `struct iovec`.
    Iov { ptr: u64, count: u64 },
    /// Not capturable (for example `sendfile`): only the byte count is reported.
    NotCaptured,
}

/// The iovec array of a `struct user_msghdr` (`msg_iov` at 16, `msg_iovlen` at 24).
#[inline(always)]
pub fn msghdr_iov(msghdr: u64) -> Payload {
    // SAFETY: user pointer reads through the checked helper.
    let (ptr, count) = unsafe {
        (
            bpf_probe_read_user((msghdr + 16) as *const u64).unwrap_or(0),
            bpf_probe_read_user((msghdr + 24) as *const u64).unwrap_or(0),
        )
    };
    Payload::Iov { ptr, count }
}

/// Finds the connection of this socket, or starts one. Returns a pointer into the map (keeps
/// the stack small).
#[inline(always)]
pub fn connection(tgid: u32, fd: i32, sock: u64) -> Option<*mut ConnState> {
    if let Some(state) = CONNS.get_ptr_mut(&sock) {
        return Some(state);
    }
    // Unique enough: two sockets first seen in the same nanosecond on the same CPU cannot be.
    // SAFETY: plain helper calls without arguments.
    let conn_id = unsafe { (bpf_ktime_get_ns() << 8) | (bpf_get_smp_processor_id() as u64 & 0xff) };
    let addrs = read_addrs(sock);
    let mut skip = ignore::NO;
    if talks_to_agent(&addrs) {
        bump(counter::AGENT_PEER);
        skip = ignore::ALL;
    } else if !port_allowed(addrs.local_port, addrs.remote_port) {
        bump(counter::PORT_FILTERED);
        skip = ignore::ALL;
    }
    let state = ConnState {
        conn_id,
        pid: tgid,
        fd,
        addrs,
        ignore: skip,
    };
    if CONNS.insert(&sock, &state, 0).is_err() {
        bump(counter::CONN_INSERT_FAILED);
        return None;
    }
    CONNS.get_ptr_mut(&sock)
}

/// Whether a socket's peer is one of the agent's own local sockets.
#[inline(always)]
fn talks_to_agent(addrs: &SockAddrs) -> bool {
    // SAFETY: read-only lookup of a plain u16.
    let Some(&agent_peer) = (unsafe { AGENT_PORTS.get(&addrs.remote_port) }) else {
        return false;
    };
    if agent_peer != AGENT_PORT_ANY_PEER && agent_peer != addrs.local_port {
        return false;
    }
    let loopback = (addrs.family == AF_INET && addrs.remote_addr[0] == 127)
        || (addrs.family == AF_INET6
            && addrs.remote_addr == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    loopback || addrs.remote_addr == addrs.local_addr
}

/// Reads the endpoints of a TCP socket from `struct sock_common` at BTF-derived offsets.
#[inline(always)]
fn read_addrs(sock: u64) -> SockAddrs {
    let off = SOCK_OFFSETS.load();
    let base = sock as *const u8;
    let mut addrs = SockAddrs::default();
    // SAFETY: `sock` is a live `struct sock *` handed over by the sock tracepoint during this
    // syscall; every read goes through bpf_probe_read_kernel and tolerates failure.
    unsafe {
        addrs.family =
            bpf_probe_read_kernel(base.add(off.family as usize) as *const u16).unwrap_or(0);
        let dport = bpf_probe_read_kernel(base.add(off.dport as usize) as *const u16).unwrap_or(0);
        addrs.remote_port = u16::from_be(dport);
        addrs.local_port =
            bpf_probe_read_kernel(base.add(off.num as usize) as *const u16).unwrap_or(0);
        if addrs.family == AF_INET {
            let d = bpf_probe_read_kernel(base.add(off.daddr as usize) as *const [u8; 4])
                .unwrap_or([0; 4]);
            let s = bpf_probe_read_kernel(base.add(off.rcv_saddr as usize) as *const [u8; 4])
                .unwrap_or([0; 4]);
            addrs.remote_addr[..4].copy_from_slice(&d);
            addrs.local_addr[..4].copy_from_slice(&s);
        } else if addrs.family == AF_INET6 {
            addrs.remote_addr =
                bpf_probe_read_kernel(base.add(off.v6_daddr as usize) as *const [u8; 16])
                    .unwrap_or([0; 16]);
            addrs.local_addr =
                bpf_probe_read_kernel(base.add(off.v6_rcv_saddr as usize) as *const [u8; 16])
                    .unwrap_or([0; 16]);
        }
    }
    addrs
}

/// Copies `len` user bytes from `src` to `payload[off..]`. Returns the bytes copied.
#[inline(always)]
fn copy_user(payload: *mut u8, off: usize, src: u64, len: usize) -> usize {
    // VERIFIER: `off < MAX_CAPTURE` and `len <= MAX_CAPTURE` keep the write inside the
    // 2 * MAX_CAPTURE payload area whatever the verifier concludes about their sum.
    let off = off & (MAX_CAPTURE - 1);
    let len = if len > MAX_CAPTURE { MAX_CAPTURE } else { len };
    // SAFETY: destination bounded as above; the helper checks the user source.
    let ret = unsafe {
        generated::bpf_probe_read_user(
            payload.add(off) as *mut c_void,
            len as u32,
            src as *const c_void,
        )
    };
    if ret == 0 { len } else { 0 }
}

/// The connection of a socket send or receive when its bytes are wanted: not ignored since
/// it was first seen, and not muted by the agent (a mute request is moved into the
/// connection's state here, where every later syscall looks anyway).
#[inline(always)]
pub fn wanted_connection(tgid: u32, inflight: &Inflight) -> Option<*mut ConnState> {
    let conn = connection(tgid, inflight.fd, inflight.sock)?;
    // SAFETY: map value pointer, valid during this program run; a racing writer on another
    // CPU can only set the same mark.
    unsafe {
        if (*conn).ignore != ignore::NO {
            return None;
        }
        let conn_id = (*conn).conn_id;
        if MUTED_CONNS.get(&conn_id).is_some() {
            (*conn).ignore = ignore::DATA;
            let _ = MUTED_CONNS.remove(&conn_id);
            bump(counter::CONN_MUTED);
            return None;
        }
    }
    Some(conn)
}

/// Builds and emits one `DataEvent` for `bytes` bytes moved by the syscall in `inflight` on
/// connection `conn` (from [`wanted_connection`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn emit_data(
    pid_tgid: u64,
    conn: *const ConnState,
    inflight: &Inflight,
    exit_ns: u64,
    bytes: u64,
    direction: u8,
    payload: Payload,
    flags: u8,
) {
    let tgid = (pid_tgid >> 32) as u32;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let mut cap = CAPTURE_BYTES.load() as u64;
    if cap > MAX_CAPTURE as u64 {
        cap = MAX_CAPTURE as u64;
    }
    let want = if bytes < cap {
        bytes as usize
    } else {
        cap as usize
    };
    // SAFETY: per-CPU scratch slot, ours for the duration of this program run.
    let payload_area = unsafe { (*scratch).payload.as_mut_ptr() };
    let mut captured: usize = 0;
    let mut flags = flags;
    match payload {
        Payload::Buf(ptr) => {
            captured = copy_user(payload_area, 0, ptr, want);
        }
        Payload::Iov { ptr, count } => {
            let mut remaining = want;
            for i in 0..MAX_IOVECS {
                if (i as u64) >= count || remaining == 0 {
                    break;
                }
                // struct iovec { void *iov_base; size_t iov_len; }
                let entry = (ptr + (i as u64) * 16) as *const [u64; 2];
                // SAFETY: user pointer read through the checked helper.
                let Ok([base, len]) = (unsafe { bpf_probe_read_user(entry) }) else {
                    break;
                };
                let take = if (len as usize) < remaining {
                    len as usize
                } else {
                    remaining
                };
                let got = copy_user(payload_area, captured, base, take);
                if got != take {
                    break;
                }
                captured += got;
                remaining -= got;
            }
        }
        Payload::NotCaptured => {}
    }
    if captured == 0 && want > 0 && !matches!(payload, Payload::NotCaptured) {
        flags |= tracer_common::data_flags::READ_FAILED;
        bump(counter::READ_USER_FAILED);
    }
    if captured > MAX_CAPTURE {
        captured = MAX_CAPTURE;
    }
    // SAFETY: scratch as above; `conn` is a map value pointer valid during this run. Fields
    // are written in place: a DataEvent built on the stack would exceed the 512-byte limit.
    unsafe {
        let ev = &mut (*scratch).event;
        ev.header = EventHeader {
            kind: kind::DATA,
            pid: tgid,
            tid: pid_tgid as u32,
            fd: inflight.fd,
            conn_id: (*conn).conn_id,
        };
        ev.enter_ns = inflight.enter_ns;
        ev.exit_ns = exit_ns;
        ev.bytes = bytes;
        ev.captured = captured as u32;
        ev.direction = direction;
        ev.syscall = inflight.syscall;
        ev.flags = flags;
        ev._pad = 0;
        ev.addrs = (*conn).addrs;
    }
    let size = core::mem::size_of::<DataEvent>() + captured;
    // SAFETY: `size` is at most the header plus MAX_CAPTURE, inside the scratch value.
    let record = unsafe { core::slice::from_raw_parts(scratch as *const u8, size) };
    if EVENTS.output::<[u8]>(record, wakeup_flags()).is_ok() {
        bump(counter::EVENTS_SENT);
    } else {
        bump(counter::RINGBUF_FULL);
    }
}
