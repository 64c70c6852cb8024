//! Kernel <-> user ABI: the records the eBPF programs write into the ring buffer and the
//! configuration they read. Compiled for `bpfel-unknown-none` (by `tracer-ebpf`) and for the
//! host (by `tracer-user`). Integer-only `#[repr(C)]` structs; every record starts with
//! [`EventHeader`] whose `kind` userspace checks, together with the length, before reading the
//! rest. Never transmute these bytes into enums: tags are plain integers.
#![no_std]

/// Largest payload prefix the kernel side can copy per syscall. The effective size is the
/// load-time global `CAPTURE_BYTES`, at most this.
pub const MAX_CAPTURE: usize = 4096;
/// Iovecs walked per `readv`/`writev`/`sendmsg`/`recvmsg` (bounded loop for the verifier).
pub const MAX_IOVECS: u32 = 8;
/// Messages reported per `sendmmsg`/`recvmmsg` call.
pub const MAX_MMSG: u32 = 4;

/// `EventHeader::kind` values.
pub mod kind {
    /// A [`super::DataEvent`] followed by `captured` payload bytes.
    pub const DATA: u32 = 1;
    /// A [`super::ConnEvent`].
    pub const CONN: u32 = 2;
    /// A [`super::ProcEvent`].
    pub const PROC: u32 = 3;
}

/// `DataEvent::direction`.
pub mod direction {
    /// Bytes the traced process wrote to the socket.
    pub const EGRESS: u8 = 0;
    /// Bytes the traced process read from the socket.
    pub const INGRESS: u8 = 1;
}

/// `DataEvent::syscall`: which system call moved the bytes.
pub mod syscall {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const READV: u8 = 3;
    pub const WRITEV: u8 = 4;
    pub const SENDTO: u8 = 5;
    pub const RECVFROM: u8 = 6;
    pub const SENDMSG: u8 = 7;
    pub const RECVMSG: u8 = 8;
    pub const SENDMMSG: u8 = 9;
    pub const RECVMMSG: u8 = 10;
    pub const SENDFILE: u8 = 11;
}

/// `DataEvent::flags` bits.
pub mod data_flags {
    /// The payload was not captured at all (for example `sendfile`, whose bytes come from a
    /// file): only the byte count is known.
    pub const BODY_NOT_CAPTURED: u8 = 1;
    /// Reading the user buffer failed; `captured` is 0 but `bytes` is valid.
    pub const READ_FAILED: u8 = 2;
}

/// `ConnEvent::what`.
pub mod conn_op {
    /// `connect()` returned 0 or `-EINPROGRESS`: this side is the client.
    pub const CONNECT: u8 = 1;
    /// `accept()`/`accept4()` returned a new socket: this side is the server.
    pub const ACCEPT: u8 = 2;
    /// `close()` on a socket the kernel side had seen.
    pub const CLOSE: u8 = 3;
}

/// `ProcEvent::what`.
pub mod proc_op {
    /// The process called `exec`: it may be another program now.
    pub const EXEC: u8 = 1;
    /// The process's main thread exited: its pid may be reused.
    pub const EXIT: u8 = 2;
}

/// Indexes into the per-CPU `COUNTERS` array the kernel side increments.
pub mod counter {
    /// Data events written to the ring buffer.
    pub const EVENTS_SENT: u32 = 0;
    /// Events lost because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 1;
    /// Socket syscalls whose payload could not be read from user memory.
    pub const READ_USER_FAILED: u32 = 2;
    /// Per-thread in-flight table full: a syscall could not be tracked.
    pub const INFLIGHT_FULL: u32 = 3;
    /// Connection events written.
    pub const CONN_EVENTS: u32 = 4;
    /// `sendfile` calls whose body was not captured.
    pub const SENDFILE_UNCAPTURED: u32 = 5;
    /// Connections first seen and then left untraced by the port filter.
    pub const PORT_FILTERED: u32 = 6;
    /// Connections left untraced because their peer is the agent itself.
    pub const AGENT_PEER: u32 = 7;
    /// Connections that could not be recorded (connection table insert failed).
    pub const CONN_INSERT_FAILED: u32 = 8;
    /// Connections whose bytes stopped at the agent's request (`MUTED_CONNS`).
    pub const CONN_MUTED: u32 = 9;
    /// Process changes (`exec`, exit) reported to the agent.
    pub const PROC_EVENTS: u32 = 10;
    /// TCP socket I/O of a traced process outside the data syscalls the kernel side decodes
    /// (io_uring, `splice`, a kernel thread, a 32-bit process): not captured.
    pub const UNDECODED_CALL: u32 = 11;
    /// Number of counters.
    pub const COUNT: u32 = 12;
}

/// Value of the kernel side's `AGENT_PORTS` map for a port the agent listens on: any peer of
/// it talks to the agent (a port bound by `listen` is never handed out as another
/// connection's ephemeral port). Other entries hold the remote port of the agent's socket.
pub const AGENT_PORT_ANY_PEER: u16 = 0;

/// Address families as the kernel writes them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The endpoints of a TCP socket, read from `struct sock_common`. IPv4 addresses sit in the
/// first 4 bytes of the 16-byte arrays; ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddrs {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub _pad: u16,
}

/// Common first field of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Thread group id (the process id users see).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The socket's file descriptor in `pid`.
    pub fd: i32,
    /// Identifies the connection for its whole life; a reused fd gets a new id.
    pub conn_id: u64,
}

/// One socket read or write. `captured` payload bytes follow the struct in the record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataEvent {
    pub header: EventHeader,
    /// `CLOCK_MONOTONIC` time at syscall entry.
    pub enter_ns: u64,
    /// `CLOCK_MONOTONIC` time at syscall exit.
    pub exit_ns: u64,
    /// Bytes the syscall moved (its return value, or one message's length for `*mmsg`).
    pub bytes: u64,
    /// Payload bytes that follow this struct (at most `CAPTURE_BYTES`).
    pub captured: u32,
    /// One of [`direction`].
    pub direction: u8,
    /// One of [`syscall`].
    pub syscall: u8,
    /// Bits of [`data_flags`].
    pub flags: u8,
    pub _pad: u8,
    pub addrs: SockAddrs,
}

/// Connection life-cycle event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub header: EventHeader,
    pub ts_ns: u64,
    /// One of [`conn_op`].
    pub what: u8,
    pub _pad: [u8; 7],
    /// Zeroed when not known yet (connect/accept report them from the socket when possible).
    pub addrs: SockAddrs,
}

/// A process the agent decided about changed (only sent when it has process rules).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcEvent {
    /// `fd` and `conn_id` are 0.
    pub header: EventHeader,
    pub ts_ns: u64,
    /// One of [`proc_op`].
    pub what: u8,
    pub _pad: [u8; 7],
}

/// Byte offsets into kernel structs, computed in userspace from BTF and set as load-time
/// globals (aya has no CO-RE for Rust programs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock_common.skc_daddr`
    pub daddr: u32,
    /// `sock_common.skc_rcv_saddr`
    pub rcv_saddr: u32,
    /// `sock_common.skc_dport` (network order)
    pub dport: u32,
    /// `sock_common.skc_num` (host order)
    pub num: u32,
    /// `sock_common.skc_family`
    pub family: u32,
    /// `sock_common.skc_v6_daddr`
    pub v6_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr`
    pub v6_rcv_saddr: u32,
    pub _pad: u32,
}

impl SockOffsets {
    /// The layout of `struct sock_common` on x86_64 kernels of the last years: the kernel
    /// side's initial value, and the agent's fallback when BTF cannot be read.
    pub const X86_64: SockOffsets = SockOffsets {
        daddr: 0,
        rcv_saddr: 4,
        dport: 12,
        num: 14,
        family: 16,
        v6_daddr: 56,
        v6_rcv_saddr: 72,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
mod user {
    //! Helpers only the agent needs.
    use super::*;

    /// Reads a `T` from the start of `bytes` if it is long enough. `T` must be one of this
    /// crate's integer-only `repr(C)` structs, for which every bit pattern is valid.
    pub fn read_record<T: Copy + Record>(bytes: &[u8]) -> Option<T> {
        if bytes.len() < core::mem::size_of::<T>() {
            return None;
        }
        // SAFETY: length checked above; `T: Record` is only implemented for integer-only
        // repr(C) structs, for which every bit pattern is a valid value; `read_unaligned`
        // copes with the ring buffer's 8-byte alignment not matching `T`'s.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const T) })
    }

    /// Marker for structs that may be read from raw bytes by [`read_record`].
    ///
    /// # Safety
    /// Implement only for `repr(C)` structs made of integers and arrays of integers.
    pub unsafe trait Record {}
    unsafe impl Record for EventHeader {}
    unsafe impl Record for DataEvent {}
    unsafe impl Record for ConnEvent {}
    unsafe impl Record for ProcEvent {}

    // SAFETY: integer-only repr(C) struct without padding holes that matter to the kernel.
    unsafe impl aya::Pod for SockOffsets {}
}
#[cfg(feature = "user")]
pub use user::{Record, read_record};

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout_is_stable() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<SockAddrs>(), 40);
        assert_eq!(offset_of!(DataEvent, enter_ns), 24);
        assert_eq!(offset_of!(DataEvent, captured), 48);
        assert_eq!(offset_of!(DataEvent, addrs), 56);
        assert_eq!(size_of::<DataEvent>(), 96);
        assert_eq!(size_of::<ConnEvent>(), 80);
        assert_eq!(offset_of!(ProcEvent, what), 32);
        assert_eq!(size_of::<ProcEvent>(), 40);
        assert_eq!(size_of::<SockOffsets>(), 32);
    }
}
