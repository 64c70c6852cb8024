//! Every map and load-time global of the kernel side, in one place.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{DataEvent, MAX_CAPTURE, SockAddrs, SockOffsets, counter};

/// The agent's own process id: never traced (its exporter would feed itself).
#[unsafe(no_mangle)]
pub static AGENT_TGID: Global<u32> = Global::new(0);
/// Payload bytes captured per syscall, at most `MAX_CAPTURE`.
#[unsafe(no_mangle)]
pub static CAPTURE_BYTES: Global<u32> = Global::new(1024);
/// When 1, only processes listed in `TARGET_PIDS` are traced.
#[unsafe(no_mangle)]
pub static FILTER_PIDS: Global<u32> = Global::new(0);
/// When 1, the agent selects processes by rules it evaluates itself (names, cgroups,
/// containers, services): it lists the processes it decided not to trace in `MUTED_PIDS`, and
/// an `exec` or exit of a process is reported to it so that it decides again.
#[unsafe(no_mangle)]
pub static PROCESS_RULES: Global<u32> = Global::new(0);
/// Offsets into `struct sock_common`, from the running kernel's BTF.
#[unsafe(no_mangle)]
pub static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets::X86_64);

/// Ring buffer to userspace; its size is set by the loader.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Unread bytes in `EVENTS` from which a new record wakes the reader (set by the loader to a
/// fraction of the ring). Below it records are written without a wakeup and the reader
/// drains on its own short timer: one wakeup per batch instead of one per record.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: Global<u64> = Global::new(1 << 20);

/// `bpf_ringbuf_query` / output flags (uapi `BPF_RB_*`).
const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Output flags for the next record: wake the reader only once a batch has piled up.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// A `*mmsg` syscall between its enter and exit tracepoints, keyed by `pid_tgid`; the other
/// data syscalls build one on the stack at the sock tracepoint.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    /// Buffer, iovec array, msghdr or mmsghdr pointer, by `syscall`.
    pub ptr: u64,
    /// Count of iovecs or messages where the syscall takes one.
    pub count: u64,
    pub enter_ns: u64,
    /// `struct sock *` noted by the sock tracepoints; 0 when this is not TCP socket I/O.
    pub sock: u64,
    pub fd: i32,
    pub syscall: u8,
    pub _pad: [u8; 3],
}

#[map]
pub static INFLIGHT: HashMap<u64, Inflight> = HashMap::with_max_entries(16384, 0);

/// What the kernel side knows of a socket it has seen I/O on, keyed by its `struct sock *`
/// (so dup'ed fds of one socket are one connection, and a reused fd is a new one). Entries
/// are removed when the socket reaches TCP_CLOSE.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnState {
    pub conn_id: u64,
    /// Process and fd that first did I/O on it (reported with the close).
    pub pid: u32,
    pub fd: i32,
    pub addrs: SockAddrs,
    /// One of [`ignore`]: decided when first seen (the agent's own peer, the port filter), or
    /// later by the agent (`MUTED_CONNS`).
    pub ignore: u64,
}

/// `ConnState::ignore` values.
pub mod ignore {
    /// Traced.
    pub const NO: u64 = 0;
    /// Nothing is reported, not even the close: the peer is the agent itself (its exporter
    /// or health endpoint), or the port filter rejects it.
    pub const ALL: u64 = 1;
    /// The agent wants no more of its bytes (a protocol it does not decode, a process it
    /// does not trace); the close is still reported, so that the agent forgets it.
    pub const DATA: u64 = 2;
}

#[map]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// Processes (tgid) whose first connection woke the reader at once, so that the agent read
/// their identity from /proc while they ran; their later connections wait for the batch (a
/// wakeup costs several microseconds on a virtual machine: an IPI).
#[map]
pub static ANNOUNCED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

/// Local ports of the agent's own sockets -> the remote port of that socket, or
/// [`tracer_common::AGENT_PORT_ANY_PEER`] for a port the agent listens on. A local
/// connection whose endpoints are those of one of the agent's sockets, reversed, talks to
/// the agent and is not traced, or the exporter's traffic would be traced in the receiver
/// and feed itself. Both ports are compared: Linux gives one ephemeral port to several
/// outgoing connections with different destinations, so another process's connection can
/// share the local port of the agent's export connection.
#[map]
pub static AGENT_PORTS: LruHashMap<u16, u16> = LruHashMap::with_max_entries(4096, 0);

/// Sockets the agent is connecting (`struct sock *`, noted at SYN_SENT in the agent's own
/// context, when the local port is not assigned yet): their port joins `AGENT_PORTS` when they
/// reach ESTABLISHED, before any byte can move.
#[map]
pub static AGENT_SOCKS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(1024, 0);

/// Processes (tgid) the agent decided not to trace: their syscalls are dropped at entry,
/// before anything is copied. Entries leave when the process calls `exec` or exits.
#[map]
pub static MUTED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Connections (`conn_id`) the agent wants no more bytes of. Read at a connection's next send
/// or receive, which moves the mark into `ConnState::ignore` and removes the entry.
#[map]
pub static MUTED_CONNS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// When 1, only connections with a local or remote port listed in `TARGET_PORTS` are traced.
#[unsafe(no_mangle)]
pub static FILTER_PORTS: Global<u32> = Global::new(0);

#[map]
pub static TARGET_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// Processes to trace when `FILTER_PIDS` is 1.
#[map]
pub static TARGET_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Event under construction: header then payload. The payload area is twice the largest
/// capture so that `offset + length` stays provably inside it.
#[repr(C)]
pub struct Scratch {
    pub event: DataEvent,
    pub payload: [u8; 2 * MAX_CAPTURE],
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}

/// Whether a connection with these endpoints passes the port filter.
#[inline(always)]
pub fn port_allowed(local: u16, remote: u16) -> bool {
    if FILTER_PORTS.load() != 1 {
        return true;
    }
    // SAFETY: read-only lookups of plain u8 values.
    unsafe { TARGET_PORTS.get(&local).is_some() || TARGET_PORTS.get(&remote).is_some() }
}

/// Whether the current process is one the tracer should look at.
#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    if tgid == AGENT_TGID.load() {
        return false;
    }
    // SAFETY (both lookups): the values are plain u8 and are only tested for presence.
    if FILTER_PIDS.load() == 1 && unsafe { TARGET_PIDS.get(&tgid) }.is_none() {
        return false;
    }
    !(PROCESS_RULES.load() == 1 && unsafe { MUTED_PIDS.get(&tgid) }.is_some())
}
