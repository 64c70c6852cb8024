//! `sock:sock_send_length` / `sock:sock_recv_length` (Linux 6.3+): fire inside
//! `sock_sendmsg`/`sock_recvmsg` for every socket, with the `struct sock *`, family and
//! protocol. They are how the kernel side knows that a `read`/`write` in flight on this thread
//! is TCP socket I/O, without kprobes.
//!
//! Format (from `events/sock/sock_send_length/format`): `sk` at 8 (ptr), `family` at 16 (u16),
//! `protocol` at 18 (u16), `ret` at 20 (i32), `flags` at 24 (i32).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{AF_INET, AF_INET6};

use crate::maps::{AGENT_PORTS, AGENT_TGID, INFLIGHT, SOCK_OFFSETS};
use crate::record::field;

const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;
/// Map update flag (uapi `BPF_NOEXIST`): insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    note_socket(&ctx);
    0
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    note_socket(&ctx);
    0
}

#[inline(always)]
fn note_socket(ctx: &TracePointContext) {
    let id = bpf_get_current_pid_tgid();
    let Some(inflight) = INFLIGHT.get_ptr_mut(&id) else {
        if (id >> 32) as u32 == AGENT_TGID.load() {
            note_agent_port(ctx);
        }
        return;
    };
    // SAFETY: offsets and types from the tracepoint's format file.
    let (sk, family, protocol, flags) = unsafe {
        (
            field::<u64>(ctx, 8),
            field::<u16>(ctx, 16),
            field::<u16>(ctx, 18),
            field::<i32>(ctx, 24),
        )
    };
    if sk == 0 || (family != AF_INET && family != AF_INET6) || protocol != IPPROTO_TCP {
        return;
    }
    // SAFETY: pointer from the map lookup, valid for this program run.
    unsafe {
        if (*inflight).sock == 0 {
            (*inflight).sock = sk;
        }
        if flags & MSG_PEEK != 0 {
            (*inflight).peek = 1;
        }
    }
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
