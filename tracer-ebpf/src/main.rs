//! Kernel side of the tracer: syscall and socket tracepoints that turn TCP socket I/O of traced
//! processes into ring-buffer records (see `tracer-common` for their layout).
//!
//! Data flow: `sock:sock_{send,recv}_length` fires at the end of every socket send or
//! receive; for TCP I/O of a traced process it reads the syscall's buffer from the thread's
//! saved registers, copies the payload prefix and emits a `DataEvent` (`*mmsg` calls go
//! through a `sys_enter_*`/`sys_exit_*` pair, `mmsg`). Nothing runs for file or pipe I/O;
//! nothing is emitted for unix or UDP sockets, the agent itself, or processes and connections
//! the agent said it does not want (`MUTED_PIDS`, `MUTED_CONNS`; `process` reports exec and
//! exit so that it can decide again).
#![no_std]
#![no_main]

mod capture;
mod conn;
mod maps;
mod mmsg;
mod process;
mod record;
mod sock;
mod syscall;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // VERIFIER: never reached; the verifier rejects programs whose panic paths survive.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
