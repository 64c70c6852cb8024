//! Loads the embedded eBPF object, sets its load-time globals and attaches every tracepoint.
//! Sits at the start of the pipeline: it hands the ring buffer to `reader` and keeps the
//! programs attached for as long as the returned [`Probes`] lives (dropping it detaches).

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tracer_common::{SockOffsets, counter};
use tracing::{debug, warn};

/// The eBPF object built by `tracer-user/build.rs` (empty when built with AYA_BUILD_SKIP).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this agent was built without its eBPF programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed: {0}")]
    Tracefs(std::io::Error),
    #[error("loading eBPF object: {0} (needs root, or CAP_BPF and CAP_PERFMON)")]
    Load(#[from] aya::EbpfError),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("{what}: {source}")]
    Program {
        what: String,
        source: aya::programs::ProgramError,
    },
    #[error("{what}: {source}")]
    Map {
        what: String,
        source: aya::maps::MapError,
    },
    #[error(
        "the kernel programs decode x86_64 syscalls only (syscall numbers and registers); this is {0}"
    )]
    UnsupportedArch(&'static str),
    #[error(
        "kernel lacks tracepoint sock:{0} (Linux 6.3+ is needed to tell TCP socket I/O apart without kprobes)"
    )]
    NoSockTracepoint(&'static str),
}

/// What the loader needs to know.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub agent_pid: u32,
    pub capture_bytes: u32,
    pub ringbuf_bytes: u32,
    /// When non-empty, only these processes are traced (filtered in the kernel).
    pub pids: Vec<u32>,
    /// When non-empty, only connections with one of these local or remote ports are traced
    /// (filtered in the kernel, before any payload is copied).
    pub ports: Vec<u16>,
    /// Ports the agent listens on (its health endpoint): connections to them are its own.
    pub own_listen_ports: Vec<u16>,
    pub sock_offsets: SockOffsets,
    /// The agent selects processes by rules of its own (names, cgroups, ...): it will mute
    /// the ones it rejects ([`Probes::mute`]) and needs to hear of `exec` and exit.
    pub process_rules: bool,
}

/// One tracepoint: (program name in the object, category, tracepoint name, required).
const TRACEPOINTS: &[(&str, &str, &str, bool)] = &[
    ("sock_send_length", "sock", "sock_send_length", true),
    ("sock_recv_length", "sock", "sock_recv_length", true),
    ("enter_sendmmsg", "syscalls", "sys_enter_sendmmsg", false),
    ("exit_sendmmsg", "syscalls", "sys_exit_sendmmsg", false),
    ("enter_recvmmsg", "syscalls", "sys_enter_recvmmsg", false),
    ("exit_recvmmsg", "syscalls", "sys_exit_recvmmsg", false),
    ("exit_connect", "syscalls", "sys_exit_connect", false),
    ("exit_accept", "syscalls", "sys_exit_accept", false),
    ("exit_accept4", "syscalls", "sys_exit_accept4", false),
    ("inet_sock_set_state", "sock", "inet_sock_set_state", false),
    ("sched_process_exec", "sched", "sched_process_exec", false),
    ("sched_process_exit", "sched", "sched_process_exit", false),
];

const TRACEFS: &str = "/sys/kernel/tracing";

/// The loaded, attached programs. Dropping it detaches every probe.
pub struct Probes {
    ebpf: Ebpf,
    pub attached: usize,
}

/// Mounts tracefs at /sys/kernel/tracing when it is not there (aya reads tracepoint ids
/// from it). Needs CAP_SYS_ADMIN; on failure the caller reports one clear line.
pub fn ensure_tracefs() -> Result<(), LoadError> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).map_err(|e| LoadError::Tracefs(e.into()))?;
    let fstype = c"tracefs";
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LoadError::Tracefs(std::io::Error::last_os_error()));
    }
    debug!("mounted tracefs at {TRACEFS}");
    Ok(())
}

fn tracepoint_exists(category: &str, name: &str) -> bool {
    [TRACEFS, "/sys/kernel/debug/tracing"].iter().any(|root| {
        Path::new(root)
            .join("events")
            .join(category)
            .join(name)
            .is_dir()
    })
}

/// The reader is woken once this fraction of the ring buffer holds unread records.
const WAKEUP_FRACTION: u32 = 8;

/// Loads the object with the options' globals and attaches every tracepoint available.
pub fn load(options: &LoadOptions) -> Result<Probes, LoadError> {
    if EBPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    if !cfg!(target_arch = "x86_64") {
        return Err(LoadError::UnsupportedArch(std::env::consts::ARCH));
    }
    ensure_tracefs()?;
    let filter_pids: u32 = u32::from(!options.pids.is_empty());
    let filter_ports: u32 = u32::from(!options.ports.is_empty());
    let process_rules: u32 = u32::from(options.process_rules);
    let capture = options.capture_bytes.min(tracer_common::MAX_CAPTURE as u32);
    // Records below this much unread data do not wake the reader, which drains on its timer.
    let wakeup_bytes = u64::from(options.ringbuf_bytes / WAKEUP_FRACTION);
    let mut ebpf = EbpfLoader::new()
        .override_global("AGENT_TGID", &options.agent_pid, true)
        .override_global("CAPTURE_BYTES", &capture, true)
        .override_global("FILTER_PIDS", &filter_pids, true)
        .override_global("FILTER_PORTS", &filter_ports, true)
        .override_global("PROCESS_RULES", &process_rules, true)
        .override_global("SOCK_OFFSETS", &options.sock_offsets, true)
        .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
        .map_max_entries("EVENTS", options.ringbuf_bytes)
        .load(EBPF_OBJECT)?;

    if !options.pids.is_empty() {
        let map = ebpf
            .map_mut("TARGET_PIDS")
            .ok_or(LoadError::MissingMap("TARGET_PIDS"))?;
        let mut targets: HashMap<_, u32, u8> =
            HashMap::try_from(map).map_err(|source| LoadError::Map {
                what: "TARGET_PIDS".into(),
                source,
            })?;
        for pid in &options.pids {
            targets.insert(pid, 1, 0).map_err(|source| LoadError::Map {
                what: format!("TARGET_PIDS insert {pid}"),
                source,
            })?;
        }
    }

    if !options.own_listen_ports.is_empty() {
        let map = ebpf
            .map_mut("AGENT_PORTS")
            .ok_or(LoadError::MissingMap("AGENT_PORTS"))?;
        let mut own: HashMap<_, u16, u16> =
            HashMap::try_from(map).map_err(|source| LoadError::Map {
                what: "AGENT_PORTS".into(),
                source,
            })?;
        for port in &options.own_listen_ports {
            own.insert(port, tracer_common::AGENT_PORT_ANY_PEER, 0)
                .map_err(|source| LoadError::Map {
                    what: format!("AGENT_PORTS insert {port}"),
                    source,
                })?;
        }
    }
    if !options.ports.is_empty() {
        let map = ebpf
            .map_mut("TARGET_PORTS")
            .ok_or(LoadError::MissingMap("TARGET_PORTS"))?;
        let mut targets: HashMap<_, u16, u8> =
            HashMap::try_from(map).map_err(|source| LoadError::Map {
                what: "TARGET_PORTS".into(),
                source,
            })?;
        for port in &options.ports {
            targets
                .insert(port, 1, 0)
                .map_err(|source| LoadError::Map {
                    what: format!("TARGET_PORTS insert {port}"),
                    source,
                })?;
        }
    }

    let mut attached = 0;
    for &(prog, category, name, required) in TRACEPOINTS {
        if !tracepoint_exists(category, name) {
            if required && category == "sock" {
                return Err(LoadError::NoSockTracepoint(name));
            }
            warn!("tracepoint {category}:{name} not available on this kernel; running without it");
            continue;
        }
        let program: &mut TracePoint = ebpf
            .program_mut(prog)
            .ok_or(LoadError::MissingProgram(prog))?
            .try_into()
            .map_err(|source| LoadError::Program {
                what: format!("{prog} is not a tracepoint"),
                source,
            })?;
        let what = || format!("load/attach {category}:{name}");
        program.load().map_err(|source| LoadError::Program {
            what: what(),
            source,
        })?;
        match program.attach(category, name) {
            Ok(_) => attached += 1,
            Err(source) if !required => warn!("{}: {source}; running without it", what()),
            Err(source) => {
                return Err(LoadError::Program {
                    what: what(),
                    source,
                });
            }
        }
    }
    Ok(Probes { ebpf, attached })
}

impl Probes {
    /// Takes the ring buffer out of the object (once).
    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(LoadError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| LoadError::Map {
            what: "EVENTS".into(),
            source,
        })
    }

    /// Sums the kernel side's per-CPU counters.
    pub fn kernel_counters(&self) -> Result<KernelCounters, LoadError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(LoadError::MissingMap("COUNTERS"))?;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| LoadError::Map {
                what: "COUNTERS".into(),
                source,
            })?;
        let sum = |index: u32| -> u64 {
            counters
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        Ok(KernelCounters {
            events_sent: sum(counter::EVENTS_SENT),
            ringbuf_full: sum(counter::RINGBUF_FULL),
            read_user_failed: sum(counter::READ_USER_FAILED),
            inflight_full: sum(counter::INFLIGHT_FULL),
            sendfile_uncaptured: sum(counter::SENDFILE_UNCAPTURED),
            port_filtered: sum(counter::PORT_FILTERED),
            agent_peer: sum(counter::AGENT_PEER),
            conn_insert_failed: sum(counter::CONN_INSERT_FAILED),
            conn_muted: sum(counter::CONN_MUTED),
            proc_events: sum(counter::PROC_EVENTS),
            undecoded_call: sum(counter::UNDECODED_CALL),
        })
    }

    /// Tells the kernel side to stop sending anything of processes `pids` (until they exec or
    /// exit) and any more bytes of connections `conns`. Returns how many could not be
    /// recorded (a full map: those keep being sent and dropped in userspace).
    pub fn mute(&mut self, pids: &[u32], conns: &[u64]) -> usize {
        let mut failed = 0;
        if !pids.is_empty() {
            match self
                .ebpf
                .map_mut("MUTED_PIDS")
                .map(HashMap::<_, u32, u8>::try_from)
            {
                Some(Ok(mut map)) => {
                    failed += pids
                        .iter()
                        .filter(|p| map.insert(**p, 1, 0).is_err())
                        .count();
                }
                _ => failed += pids.len(),
            }
        }
        if !conns.is_empty() {
            match self
                .ebpf
                .map_mut("MUTED_CONNS")
                .map(HashMap::<_, u64, u8>::try_from)
            {
                Some(Ok(mut map)) => {
                    failed += conns
                        .iter()
                        .filter(|c| map.insert(**c, 1, 0).is_err())
                        .count();
                }
                _ => failed += conns.len(),
            }
        }
        failed
    }
}

/// Totals of the kernel side's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelCounters {
    pub events_sent: u64,
    pub ringbuf_full: u64,
    pub read_user_failed: u64,
    pub inflight_full: u64,
    pub sendfile_uncaptured: u64,
    pub port_filtered: u64,
    pub agent_peer: u64,
    pub conn_insert_failed: u64,
    pub conn_muted: u64,
    pub proc_events: u64,
    pub undecoded_call: u64,
}
