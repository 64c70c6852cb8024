//! Which syscall the current thread is in, and its arguments, read from the registers it
//! entered the kernel with. The sock tracepoints (`sock.rs`) fire inside `sock_sendmsg` /
//! `sock_recvmsg` and say nothing of the syscall around them; this is how they learn the
//! user buffer to copy without a `sys_enter_*` program stashing it on every data syscall of
//! every process.
//!
//! x86_64 only: the syscall numbers below and the register names are that ABI's (`pt_regs`
//! comes from aya's bindings for the target architecture; the agent refuses to load
//! elsewhere). 32-bit (compat) callers are not decoded.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs},
};
use tracer_common::syscall;

/// x86_64 syscall numbers of the data syscalls decoded here.
mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const RECVMMSG: u64 = 299;
    pub const SENDMMSG: u64 = 307;
}

/// `__USER_CS`: the code segment of a 64-bit user-mode frame. Kernel threads (and io_uring
/// workers) have zeroed registers, and compat tasks `__USER32_CS`.
const USER64_CS: u64 = 0x33;

/// The syscall in progress on this thread: its `tracer_common::syscall` kind and first
/// three arguments (fd, buffer / iovec / msghdr pointer, length / count).
#[derive(Clone, Copy)]
pub struct Call {
    pub kind: u8,
    pub fd: i32,
    pub ptr: u64,
    pub count: u64,
}

/// The registers this thread entered the kernel with, when it is a 64-bit user syscall
/// (they hold its arguments until it returns: only `ax` takes the return value).
#[inline(always)]
pub fn user_regs() -> Option<pt_regs> {
    // SAFETY: the helpers return the current task and its saved user registers; the read
    // goes through bpf_probe_read_kernel and tolerates failure.
    let regs = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        bpf_probe_read_kernel(regs).ok()?
    };
    (regs.cs == USER64_CS).then_some(regs)
}

/// The data syscall this thread is in, or `None` when it is not in one we decode (a kernel
/// thread, io_uring, `splice`, a 32-bit process).
#[inline(always)]
pub fn current() -> Option<Call> {
    let regs = user_regs()?;
    let kind = match regs.orig_rax {
        nr::READ => syscall::READ,
        nr::WRITE => syscall::WRITE,
        nr::READV => syscall::READV,
        nr::WRITEV => syscall::WRITEV,
        nr::SENDFILE => syscall::SENDFILE,
        nr::SENDTO => syscall::SENDTO,
        nr::RECVFROM => syscall::RECVFROM,
        nr::SENDMSG => syscall::SENDMSG,
        nr::RECVMSG => syscall::RECVMSG,
        nr::RECVMMSG => syscall::RECVMMSG,
        nr::SENDMMSG => syscall::SENDMMSG,
        _ => return None,
    };
    Some(Call {
        kind,
        fd: regs.rdi as i32,
        ptr: regs.rsi,
        count: regs.rdx,
    })
}
