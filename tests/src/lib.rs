//! `tracer-tests`: harness for the privileged end-to-end suite.
//!
//! The tests in `tests/tests/` start real servers and clients as separate
//! processes (Python peers from `tests/peers/`, the `rust_http_server` helper
//! binary, `curl`), run the real `tracer` agent against them and check the
//! spans that arrive at a real OTLP receiver ([`receiver::Receiver`]).
//!
//! Everything here is bounded: every wait takes a timeout, every child process
//! is killed when its guard drops (also while unwinding from a failed
//! assertion), and network namespaces are deleted on drop.
//!
//! A test that cannot run (not root, agent binary missing, BPF unavailable)
//! fails with a message saying so; nothing is skipped.

pub mod accuracy;
pub mod agent;
pub mod check;
pub mod kube_api;
pub mod netns;
pub mod peers;
pub mod receiver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Root of the cargo workspace (`CARGO_MANIFEST_DIR/..`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// Directory holding the Python peers.
pub fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// Fails the calling test unless it runs as root: the agent loads eBPF
/// programs and the namespace tests create network namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the end-to-end suite must run as root (euid is {euid}); it loads eBPF programs \
         and creates network namespaces. Run it with `sudo -E cargo xtask test` or as root."
    );
}

/// Polls `f` every 20 ms until it returns `Some`, or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Random-ish 128-bit hex trace id and 64-bit span id for injected contexts
/// (unique per call, never all zero).
pub fn fresh_ids() -> (String, String) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    let pid = std::process::id() as u64;
    let a = nanos ^ (pid << 32) ^ 0x5bd1_e995_0000_0001;
    let b = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let c = (nanos.rotate_left(17) ^ n) | (1 << 60);
    (format!("{a:016x}{b:016x}"), format!("{c:016x}"))
}

/// How long a test waits for expected spans (the agent holds spans for
/// `--settle-ms` and then batches them).
pub const SPAN_TIMEOUT: Duration = Duration::from_secs(30);
/// After the expected spans arrived, how long to keep watching for extra
/// (duplicate or unexpected) ones.
pub const QUIET: Duration = Duration::from_millis(1500);

/// A per-test scratch directory under the cargo target tmp dir (or /tmp).
pub fn scratch_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("tracer-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// `http://127.0.0.1:{port}{path}` for each path.
pub fn urls(port: u16, paths: &[&str]) -> Vec<String> {
    paths
        .iter()
        .map(|p| format!("http://127.0.0.1:{port}{p}"))
        .collect()
}
