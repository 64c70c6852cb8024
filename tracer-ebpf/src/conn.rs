//! Connection life cycle: `connect` (client side) and `accept`/`accept4` (server side) from
//! `syscalls:sys_exit_*` alone (the arguments are read from the saved registers), with
//! addresses from the user's sockaddr (connect's target, accept's peer; only AF_INET/AF_INET6
//! are reported); and the end of a connection from `sock:inet_sock_set_state` reaching
//! TCP_CLOSE (Linux 4.16+), which also covers sockets closed by process exit and dup'ed fds.
//! The close is reported only for sockets the data path has seen, whose entry it removes.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{AF_INET, AF_INET6, ConnEvent, EventHeader, SockAddrs, conn_op, counter, kind};

use crate::maps::{
    AGENT_PORTS, AGENT_SOCKS, AGENT_TGID, ANNOUNCED, BPF_RB_FORCE_WAKEUP, CONNS, EVENTS,
    FILTER_PORTS, bump, ignore, is_traced, port_allowed, wakeup_flags,
};
use crate::record::field;
use crate::syscall::user_regs;

const EINPROGRESS: i64 = 115;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

/// Which life-cycle call a `sys_exit_*` program reports.
#[derive(Clone, Copy)]
enum Call {
    Connect,
    Accept,
}

/// Reads an AF_INET/AF_INET6 sockaddr from user memory as the remote end.
#[inline(always)]
fn read_sockaddr(ptr: u64) -> Option<SockAddrs> {
    if ptr == 0 {
        return None;
    }
    let mut addrs = SockAddrs::default();
    // SAFETY: user memory read through the checked helper.
    unsafe {
        addrs.family = bpf_probe_read_user(ptr as *const u16).ok()?;
        let port = bpf_probe_read_user((ptr + 2) as *const u16).ok()?;
        addrs.remote_port = u16::from_be(port);
        if addrs.family == AF_INET {
            let a = bpf_probe_read_user((ptr + 4) as *const [u8; 4]).ok()?;
            addrs.remote_addr[..4].copy_from_slice(&a);
        } else if addrs.family == AF_INET6 {
            addrs.remote_addr = bpf_probe_read_user((ptr + 8) as *const [u8; 16]).ok()?;
        } else {
            return None;
        }
    }
    Some(addrs)
}

#[inline(always)]
fn emit_conn(pid_tgid: u64, fd: i32, conn_id: u64, what: u8, addrs: SockAddrs) {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    entry.write(ConnEvent {
        header: EventHeader {
            kind: kind::CONN,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            fd,
            conn_id,
        },
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        what,
        _pad: [0; 7],
        addrs,
    });
    // A process's first connection wakes the reader at once: the agent reads the process's
    // identity from /proc while it still runs (a short-lived client may exit within
    // milliseconds).
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the value is only tested for presence.
    let flags = if what != conn_op::CLOSE && unsafe { ANNOUNCED.get(&tgid) }.is_none() {
        let _ = ANNOUNCED.insert(&tgid, &1, 0);
        BPF_RB_FORCE_WAKEUP
    } else {
        wakeup_flags()
    };
    entry.submit(flags);
    bump(counter::CONN_EVENTS);
}

/// The end of a `connect` or `accept`: its arguments (the socket's fd, the user's sockaddr)
/// are still in the registers the thread entered the kernel with, so no program runs at the
/// syscall's entry and nothing is stashed between the two.
#[inline(always)]
fn finish(ctx: &TracePointContext, call: Call) -> u32 {
    // SAFETY: `ret` at 16 in every sys_exit format.
    let ret = unsafe { field::<i64>(ctx, 16) };
    let succeeded = match call {
        Call::Connect => ret == 0 || ret == -EINPROGRESS,
        // With a port filter, accepts are not reported: only the peer's (ephemeral) port is at
        // hand here, and the connection's first I/O reports it with both ends anyway.
        Call::Accept => ret >= 0 && FILTER_PORTS.load() == 0,
    };
    if !succeeded {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return 0;
    }
    // fd in `di`, sockaddr pointer in `si` for connect, accept and accept4 alike.
    let Some(regs) = user_regs() else {
        return 0;
    };
    let Some(addrs) = read_sockaddr(regs.rsi) else {
        return 0;
    };
    match call {
        Call::Connect if port_allowed(0, addrs.remote_port) => {
            emit_conn(id, regs.rdi as i32, 0, conn_op::CONNECT, addrs);
        }
        Call::Accept => emit_conn(id, ret as i32, 0, conn_op::ACCEPT, addrs),
        Call::Connect => {}
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn exit_connect(ctx: TracePointContext) -> u32 {
    finish(&ctx, Call::Connect)
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    finish(&ctx, Call::Accept)
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn exit_accept4(ctx: TracePointContext) -> u32 {
    finish(&ctx, Call::Accept)
}

/// `sock:inet_sock_set_state`: `skaddr` at 8 (ptr), `newstate` at 20 (i32), `sport` at 24
/// (u16, host order).
///
/// Also learns the local port of every connection the agent itself opens, before any byte
/// moves (noting it at the first send would race with the peer's first read: the send
/// tracepoint fires after the data is queued). At SYN_SENT the task is the agent but the port
/// is not assigned yet, so the socket is remembered; at ESTABLISHED (often in softirq, any
/// task) the remembered socket's port is noted.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format file.
    let (sk, newstate) = unsafe { (field::<u64>(&ctx, 8), field::<i32>(&ctx, 20)) };
    if newstate == TCP_SYN_SENT {
        if (bpf_get_current_pid_tgid() >> 32) as u32 == AGENT_TGID.load() {
            let _ = AGENT_SOCKS.insert(&sk, &1, 0);
        }
        return 0;
    }
    if newstate == TCP_ESTABLISHED {
        // SAFETY: read-only lookup.
        if unsafe { AGENT_SOCKS.get(&sk) }.is_some() {
            let _ = AGENT_SOCKS.remove(&sk);
            // SAFETY: offset from the format file.
            let (sport, dport) = unsafe { (field::<u16>(&ctx, 24), field::<u16>(&ctx, 26)) };
            let _ = AGENT_PORTS.insert(&sport, &dport, 0);
        }
        return 0;
    }
    if newstate != TCP_CLOSE {
        return 0;
    }
    // A refused connect goes SYN_SENT -> CLOSE: forget it before its memory is reused.
    let _ = AGENT_SOCKS.remove(&sk);
    // SAFETY: read-only copy.
    let Some(state) = (unsafe { CONNS.get(&sk) }).copied() else {
        return 0;
    };
    let _ = CONNS.remove(&sk);
    if state.ignore == ignore::ALL {
        return 0;
    }
    emit_conn(
        ((state.pid as u64) << 32) | state.pid as u64,
        state.fd,
        state.conn_id,
        conn_op::CLOSE,
        state.addrs,
    );
    0
}
