//! Socket data syscalls: `read`, `write`, `readv`, `writev`, `sendto`, `recvfrom`, `sendmsg`,
//! `recvmsg`, `sendmmsg`, `recvmmsg` and `sendfile64`, each a `syscalls:sys_enter_*` /
//! `sys_exit_*` tracepoint pair (any kernel with syscall tracepoints).
//!
//! Arguments come from the tracepoint format: `fd` at 16, the buffer / iovec / msghdr pointer
//! at 24, the length / iovec count / message count at 32; the exit's return value at 16.
//! The payload is read at exit, when the return value says how much of it is valid.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{MAX_MMSG, counter, data_flags, direction, syscall};

use crate::record::field;
use crate::{
    capture::{Payload, emit_data, wanted_connection},
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
        peek: 0,
        _pad: [0; 2],
    };
    if INFLIGHT.insert(&id, &inflight, 0).is_err() {
        bump(counter::INFLIGHT_FULL);
    }
    0
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
    if inflight.sock == 0 || inflight.peek != 0 || ret <= 0 {
        return 0;
    }
    let Some(conn) = wanted_connection((id >> 32) as u32, &inflight) else {
        return 0;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let bytes = ret as u64;
    match inflight.syscall {
        syscall::READ | syscall::RECVFROM => emit_data(
            id,
            conn,
            &inflight,
            now,
            bytes,
            direction::INGRESS,
            Payload::Buf(inflight.ptr),
            0,
        ),
        syscall::WRITE | syscall::SENDTO => emit_data(
            id,
            conn,
            &inflight,
            now,
            bytes,
            direction::EGRESS,
            Payload::Buf(inflight.ptr),
            0,
        ),
        syscall::READV => emit_data(
            id,
            conn,
            &inflight,
            now,
            bytes,
            direction::INGRESS,
            Payload::Iov {
                ptr: inflight.ptr,
                count: inflight.count,
            },
            0,
        ),
        syscall::WRITEV => emit_data(
            id,
            conn,
            &inflight,
            now,
            bytes,
            direction::EGRESS,
            Payload::Iov {
                ptr: inflight.ptr,
                count: inflight.count,
            },
            0,
        ),
        syscall::RECVMSG | syscall::SENDMSG => {
            let dir = if inflight.syscall == syscall::RECVMSG {
                direction::INGRESS
            } else {
                direction::EGRESS
            };
            let iov = msghdr_iov(inflight.ptr);
            emit_data(id, conn, &inflight, now, bytes, dir, iov, 0);
        }
        syscall::RECVMMSG | syscall::SENDMMSG => {
            let dir = if inflight.syscall == syscall::RECVMMSG {
                direction::INGRESS
            } else {
                direction::EGRESS
            };
            // `ret` is the number of messages; `struct mmsghdr` is a 56-byte msghdr followed
            // by the u32 `msg_len`, 64 bytes in all.
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
        }
        syscall::SENDFILE => {
            bump(counter::SENDFILE_UNCAPTURED);
            emit_data(
                id,
                conn,
                &inflight,
                now,
                bytes,
                direction::EGRESS,
                Payload::NotCaptured,
                data_flags::BODY_NOT_CAPTURED,
            );
        }
        _ => {}
    }
    0
}

/// The iovec array of a `struct user_msghdr` (`msg_iov` at 16, `msg_iovlen` at 24).
#[inline(always)]
fn msghdr_iov(msghdr: u64) -> Payload {
    // SAFETY: user pointer reads through the checked helper.
    let (ptr, count) = unsafe {
        (
            bpf_probe_read_user((msghdr + 16) as *const u64).unwrap_or(0),
            bpf_probe_read_user((msghdr + 24) as *const u64).unwrap_or(0),
        )
    };
    Payload::Iov { ptr, count }
}

macro_rules! syscall_pair {
    ($enter:ident, $exit:ident, $enter_name:literal, $exit_name:literal, $kind:expr) => {
        #[tracepoint(category = "syscalls", name = $enter_name)]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter(&ctx, $kind)
        }
        #[tracepoint(category = "syscalls", name = $exit_name)]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx)
        }
    };
}

syscall_pair!(
    enter_read,
    exit_read,
    "sys_enter_read",
    "sys_exit_read",
    syscall::READ
);
syscall_pair!(
    enter_write,
    exit_write,
    "sys_enter_write",
    "sys_exit_write",
    syscall::WRITE
);
syscall_pair!(
    enter_readv,
    exit_readv,
    "sys_enter_readv",
    "sys_exit_readv",
    syscall::READV
);
syscall_pair!(
    enter_writev,
    exit_writev,
    "sys_enter_writev",
    "sys_exit_writev",
    syscall::WRITEV
);
syscall_pair!(
    enter_sendto,
    exit_sendto,
    "sys_enter_sendto",
    "sys_exit_sendto",
    syscall::SENDTO
);
syscall_pair!(
    enter_recvfrom,
    exit_recvfrom,
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    syscall::RECVFROM
);
syscall_pair!(
    enter_sendmsg,
    exit_sendmsg,
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    syscall::SENDMSG
);
syscall_pair!(
    enter_recvmsg,
    exit_recvmsg,
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    syscall::RECVMSG
);
syscall_pair!(
    enter_sendmmsg,
    exit_sendmmsg,
    "sys_enter_sendmmsg",
    "sys_exit_sendmmsg",
    syscall::SENDMMSG
);
syscall_pair!(
    enter_recvmmsg,
    exit_recvmmsg,
    "sys_enter_recvmmsg",
    "sys_exit_recvmmsg",
    syscall::RECVMMSG
);
syscall_pair!(
    enter_sendfile,
    exit_sendfile,
    "sys_enter_sendfile64",
    "sys_exit_sendfile64",
    syscall::SENDFILE
);
