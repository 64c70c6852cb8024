//! Kernel side of the tracer: syscall and socket tracepoints that turn TCP socket I/O of traced
//! processes into ring-buffer records (see `tracer-common` for their layout).
//!
//! Data flow: `sys_enter_*` stashes the syscall's arguments per thread (`INFLIGHT`);
//! `sock:sock_{send,recv}_length` marks that syscall as TCP socket I/O and notes the socket;
//! `sys_exit_*` copies the payload prefix and emits a `DataEvent`. Nothing is emitted for
//! files, pipes, unix or UDP sockets, or the agent itself, nor for processes and connections
//! the agent said it does not want (`MUTED_PIDS`, `MUTED_CONNS`; `process` reports exec and
//! exit so that it can decide again).
#![no_std]
#![no_main]

mod capture;
mod conn;
mod data;
mod maps;
mod process;
mod record;
mod sock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // VERIFIER: never reached; the verifier rejects programs whose panic paths survive.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
