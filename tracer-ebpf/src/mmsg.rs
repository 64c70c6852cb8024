//! `sendmmsg` / `recvmmsg`: the one kind of data syscall still taken as a
//! `syscalls:sys_enter_*` / `sys_exit_*` pair. One call moves several messages, each a
//! `sock_sendmsg`/`sock_recvmsg` of its own, and the sock tracepoint cannot tell which
//! message it fires for; so the enter stashes the `mmsghdr` array per thread (`INFLIGHT`), the
//! sock tracepoint marks it as TCP socket I/O (`note_socket`), and the exit emits one record
//! per message, up to `MAX_MMSG`, with the lengths the kernel wrote back.
//!
//! Arguments come from the tracepoint format: `fd` at 16, the `mmsghdr` array at 24, `vlen`
//! at 32; the exit's return value (messages moved) at 16.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{MAX_MMSG, counter, direction, syscall};

use crate::record::field;
use crate::{
    capture::{emit_data, msghdr_iov, wanted_connection},
    maps::{INFLIGHT, Inflight, bump, is_traced},
};

#[inline(always)]
fn enter(ctx: &TracePointContext, syscall: u8) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return 0;
    }
    // SAFETY: offsets from the syscall tracepoint format (args are 8 bytes each from 16).
    let (fd, ptr, count) = unsafe {
        (
            field::<u64>(ctx, 16),
            field::<u64>(ctx, 24),
            field::<u64>(ctx, 32),
        )
    };
    let inflight = Inflight {
        ptr,
        count,
        // SAFETY: helper without arguments.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        sock: 0,
        fd: fd as i32,
        syscall,
        _pad: [0; 3],
    };
    if INFLIGHT.insert(&id, &inflight, 0).is_err() {
        bump(counter::INFLIGHT_FULL);
    }
    0
}

/// Called by the sock tracepoints for TCP socket I/O inside a `*mmsg` call: marks the stashed
/// call as socket I/O on `sock`.
#[inline(always)]
pub fn note_socket(pid_tgid: u64, sock: u64) {
    if let Some(inflight) = INFLIGHT.get_ptr_mut(&pid_tgid) {
        // SAFETY: pointer from the map lookup, valid for this program run.
        unsafe {
            if (*inflight).sock == 0 {
                (*inflight).sock = sock;
            }
        }
    }
}

#[inline(always)]
fn exit(ctx: &TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: read-only copy of the map value, removed right after.
    let Some(inflight) = (unsafe { INFLIGHT.get(&id) }).copied() else {
        return 0;
    };
    let _ = INFLIGHT.remove(&id);
    // SAFETY: `ret` is at 16 in every sys_exit format.
    let ret = unsafe { field::<i64>(ctx, 16) };
    if inflight.sock == 0 || ret <= 0 {
        return 0;
    }
    let Some(conn) = wanted_connection((id >> 32) as u32, &inflight) else {
        return 0;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let dir = if inflight.syscall == syscall::RECVMMSG {
        direction::INGRESS
    } else {
        direction::EGRESS
    };
    // `ret` is the number of messages; `struct mmsghdr` is a 56-byte msghdr followed by the
    // u32 `msg_len`, 64 bytes in all.
    for i in 0..MAX_MMSG {
        if (i as i64) >= ret {
            break;
        }
        let hdr = inflight.ptr + (i as u64) * 64;
        // SAFETY: user pointer read through the checked helper.
        let Ok(len) = (unsafe { bpf_probe_read_user((hdr + 56) as *const u32) }) else {
            break;
        };
        if len > 0 {
            emit_data(
                id,
                conn,
                &inflight,
                now,
                len as u64,
                dir,
                msghdr_iov(hdr),
                0,
            );
        }
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmmsg")]
pub fn enter_sendmmsg(ctx: TracePointContext) -> u32 {
    enter(&ctx, syscall::SENDMMSG)
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmmsg")]
pub fn exit_sendmmsg(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_enter_recvmmsg")]
pub fn enter_recvmmsg(ctx: TracePointContext) -> u32 {
    enter(&ctx, syscall::RECVMMSG)
}

#[tracepoint(category = "syscalls", name = "sys_exit_recvmmsg")]
pub fn exit_recvmmsg(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}
