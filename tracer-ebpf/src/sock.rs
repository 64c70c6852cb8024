//! `sock:sock_send_length` / `sock:sock_recv_length` (Linux 6.3+): fire at the end of
//! `sock_sendmsg`/`sock_recvmsg` for every socket, with the `struct sock *`, family, protocol
//! and byte count. This is where the data path starts: for TCP socket I/O of a traced process
//! they read the syscall around them from its saved registers (`syscall::current`) and emit a
//! `DataEvent` at once, the bytes being in the user buffer by then (received or sent). One
//! program run per socket I/O; file, pipe and other I/O runs nothing. `*mmsg` calls are
//! handed to `mmsg`, which still needs its syscall pair.
//!
//! Format (from `events/sock/sock_send_length/format`): `sk` at 8 (ptr), `family` at 16 (u16),
//! `protocol` at 18 (u16), `ret` at 20 (i32), `flags` at 24 (i32).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{AF_INET, AF_INET6, counter, data_flags, direction, syscall};

use crate::capture::{Payload, emit_data, msghdr_iov, wanted_connection};
use crate::maps::{AGENT_PORTS, AGENT_TGID, Inflight, SOCK_OFFSETS, bump, is_traced};
use crate::record::field;
use crate::{mmsg, syscall::current};

const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;
/// Map update flag (uapi `BPF_NOEXIST`): insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    socket_io(&ctx, direction::EGRESS);
    0
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    socket_io(&ctx, direction::INGRESS);
    0
}

#[inline(always)]
fn socket_io(ctx: &TracePointContext, dir: u8) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        note_agent_port(ctx);
        return;
    }
    // The record's own tests come first: they are direct loads, and most socket I/O that is
    // not wanted (EAGAIN, unix and UDP sockets) stops here without the map lookups of
    // `is_traced`.
    // SAFETY: offsets and types from the tracepoint's format file.
    let (sk, family, protocol, ret, msg_flags) = unsafe {
        (
            field::<u64>(ctx, 8),
            field::<u16>(ctx, 16),
            field::<u16>(ctx, 18),
            field::<i32>(ctx, 20),
            field::<i32>(ctx, 24),
        )
    };
    if sk == 0 || (family != AF_INET && family != AF_INET6) || protocol != IPPROTO_TCP {
        return;
    }
    // Nothing moved (EAGAIN, an error, end of stream), or a peek whose bytes come again.
    if ret <= 0 || (dir == direction::INGRESS && msg_flags & MSG_PEEK != 0) {
        return;
    }
    if !is_traced(tgid) {
        return;
    }
    let Some(call) = current() else {
        bump(counter::UNDECODED_CALL);
        return;
    };
    let (call_dir, payload, flags) = match call.kind {
        syscall::SENDMMSG | syscall::RECVMMSG => {
            mmsg::note_socket(id, sk);
            return;
        }
        syscall::READ | syscall::RECVFROM => (direction::INGRESS, Payload::Buf(call.ptr), 0),
        syscall::WRITE | syscall::SENDTO => (direction::EGRESS, Payload::Buf(call.ptr), 0),
        syscall::READV => (
            direction::INGRESS,
            Payload::Iov {
                ptr: call.ptr,
                count: call.count,
            },
            0,
        ),
        syscall::WRITEV => (
            direction::EGRESS,
            Payload::Iov {
                ptr: call.ptr,
                count: call.count,
            },
            0,
        ),
        syscall::RECVMSG => (direction::INGRESS, msghdr_iov(call.ptr), 0),
        syscall::SENDMSG => (direction::EGRESS, msghdr_iov(call.ptr), 0),
        // The bytes come from a file through the page cache: only their count is known.
        syscall::SENDFILE => (
            direction::EGRESS,
            Payload::NotCaptured,
            data_flags::BODY_NOT_CAPTURED,
        ),
        _ => return,
    };
    // A receive inside a send call (or the reverse) is not the call's own I/O.
    if call_dir != dir {
        bump(counter::UNDECODED_CALL);
        return;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let io = Inflight {
        ptr: call.ptr,
        count: call.count,
        enter_ns: now,
        sock: sk,
        fd: call.fd,
        syscall: call.kind,
        _pad: [0; 3],
    };
    let Some(conn) = wanted_connection(tgid, &io) else {
        return;
    };
    if call.kind == syscall::SENDFILE {
        bump(counter::SENDFILE_UNCAPTURED);
    }
    emit_data(id, conn, &io, now, ret as u64, dir, payload, flags);
}

/// Remembers the local and remote port of one of the agent's own TCP sockets, unless its
/// local port is known already (its connect noted it, or it is a listening port the loader
/// entered as `AGENT_PORT_ANY_PEER`, which an accepted connection's remote port must not narrow).
#[inline(always)]
fn note_agent_port(ctx: &TracePointContext) {
    // SAFETY: offsets from the tracepoint format; kernel reads through the checked helper.
    unsafe {
        let sk = field::<u64>(ctx, 8);
        if sk == 0 {
            return;
        }
        let off = SOCK_OFFSETS.load();
        let base = sk as *const u8;
        let Ok(port) = bpf_probe_read_kernel(base.add(off.num as usize) as *const u16) else {
            return;
        };
        let Ok(dport) = bpf_probe_read_kernel(base.add(off.dport as usize) as *const u16) else {
            return;
        };
        let _ = AGENT_PORTS.insert(&port, &u16::from_be(dport), BPF_NOEXIST);
    }
}
