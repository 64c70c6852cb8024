//! Two network namespaces joined by a veth pair, deleted on drop.
//!
//! Addresses are `10.231.N.1/24` (namespace `a`) and `10.231.N.2/24`
//! (namespace `b`), with `N` derived from the test process id and a counter
//! so concurrent runs do not collide. Names are pid-based too.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A pair of namespaces `a` and `b` linked by a veth pair.
pub struct NetnsPair {
    pub ns_a: String,
    pub ns_b: String,
    pub addr_a: String,
    pub addr_b: String,
    created: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (iproute2 must be installed)");
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl NetnsPair {
    pub fn create() -> NetnsPair {
        crate::require_root();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let subnet = (pid.wrapping_add(n * 37) % 250) + 1;
        let tag = format!("{}{}", pid % 1_000_000, n);
        let mut pair = NetnsPair {
            ns_a: format!("trt{tag}a"),
            ns_b: format!("trt{tag}b"),
            addr_a: format!("10.231.{subnet}.1"),
            addr_b: format!("10.231.{subnet}.2"),
            created: Vec::new(),
        };
        // Interface names must stay under 16 bytes.
        let veth_a = format!("vt{tag}a");
        let veth_b = format!("vt{tag}b");
        for ns in [pair.ns_a.clone(), pair.ns_b.clone()] {
            ip(&["netns", "add", &ns]);
            pair.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &pair.ns_a, "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
            "netns", &pair.ns_b,
        ]);
        ip(&[
            "-n",
            &pair.ns_a,
            "addr",
            "add",
            &format!("{}/24", pair.addr_a),
            "dev",
            &veth_a,
        ]);
        ip(&[
            "-n",
            &pair.ns_b,
            "addr",
            "add",
            &format!("{}/24", pair.addr_b),
            "dev",
            &veth_b,
        ]);
        ip(&["-n", &pair.ns_a, "link", "set", &veth_a, "up"]);
        ip(&["-n", &pair.ns_b, "link", "set", &veth_b, "up"]);
        pair
    }

    /// `ip netns exec <ns> program args...`
    pub fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// Waits until `addr:port` accepts TCP connections as seen from inside
    /// namespace `from_ns` (runs a small Python probe there).
    pub fn wait_port(from_ns: &str, addr: &str, port: u16, timeout: Duration) {
        let script = format!(
            "import socket,time,sys\nend=time.time()+{secs}\nwhile time.time()<end:\n  try:\n    socket.create_connection(('{addr}',{port}),0.3).close(); sys.exit(0)\n  except OSError: time.sleep(0.05)\nsys.exit(1)",
            secs = timeout.as_secs_f64()
        );
        let mut cmd = Self::command(from_ns, crate::peers::python());
        cmd.args(["-c", &script]);
        let out = crate::peers::run(cmd, timeout + Duration::from_secs(5));
        assert!(
            out.status.success(),
            "{addr}:{port} did not accept connections from namespace {from_ns} within {timeout:?}: {}",
            out.stdout
        );
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace also deletes the veth end inside it (and so its peer).
        for ns in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}
