//! Peer processes: servers the agent traces and clients run to completion.
//!
//! Servers are started in their own process group, waited for until their
//! port accepts connections, and the whole group is SIGKILLed when the
//! [`Peer`] guard drops. Clients run through [`run_client`], which kills them
//! after a timeout and fails the test on a non-zero exit.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
pub const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a client may run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The real Python interpreter (not a pyenv shim script), so the traced
/// process is python itself and starts quickly.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 must be installed for the end-to-end suite");
        assert!(
            out.status.success(),
            "python3 -c failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
    .clone()
}

/// `python3 tests/peers/<script> args...`.
pub fn python_script(script: &str) -> Command {
    let path = crate::peers_dir().join(script);
    assert!(path.is_file(), "peer script missing: {}", path.display());
    let mut cmd = Command::new(python());
    cmd.arg(path).env("PYTHONUNBUFFERED", "1");
    cmd
}

/// The `rust_http_server` helper binary built with this crate.
pub fn rust_server_bin() -> PathBuf {
    // Integration tests get CARGO_BIN_EXE_*; the library only knows the
    // target dir layout: the helper sits next to the test's deps directory.
    if let Some(p) = std::env::var_os("RUST_HTTP_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile dir");
    let bin = dir.join("rust_http_server");
    assert!(
        bin.is_file(),
        "helper binary missing at {}; build with `cargo test -p tracer-tests --no-run`",
        bin.display()
    );
    bin
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A long-running peer; its process group is SIGKILLed on drop.
pub struct Peer {
    name: String,
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Peer {
    /// Spawns `cmd` in its own process group, capturing its output.
    pub fn spawn(name: &str, mut cmd: Command) -> Peer {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut o = output.lock().unwrap();
                    if o.len() < 1 << 20 {
                        o.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        eprintln!("[peer] {name} pid {}: {cmd:?}", child.id());
        Peer {
            name: name.to_string(),
            child,
            output,
        }
    }

    /// Spawns a server and waits until `addr` (on the host's loopback) accepts.
    pub fn server(name: &str, cmd: Command, addr: SocketAddr) -> Peer {
        let mut peer = Peer::spawn(name, cmd);
        peer.wait_until(
            SERVER_READY_TIMEOUT,
            &format!("{addr} accepts connections"),
            |_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        );
        peer
    }

    /// Polls `ready` until true; fails the test with the peer's output if the
    /// peer exits first or `timeout` passes.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut(&Peer) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{} exited with {status} before {what}. Output:\n{}",
                    self.name,
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not ready ({what}) within {timeout:?}. Output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the peer printed so far (stdout and stderr interleaved).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} (pid {}) output -----\n{}\n-----",
                self.name,
                self.child.id(),
                self.output()
            );
        }
    }
}

/// Result of a client run.
#[derive(Debug)]
pub struct ClientOutput {
    pub status: ExitStatus,
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion within `timeout` (killed and the test failed
/// otherwise) and returns its output without judging the exit status.
pub fn run(cmd: Command, timeout: Duration) -> ClientOutput {
    let name = format!("{:?}", cmd.get_program());
    let peer = Peer::spawn(&name, cmd);
    let mut peer = peer;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = peer.child.try_wait().expect("try_wait client") {
            break s;
        }
        if Instant::now() >= deadline {
            panic!(
                "client {name} did not finish within {timeout:?}. Output so far:\n{}",
                peer.output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the reader threads drain the pipes.
    std::thread::sleep(Duration::from_millis(50));
    let out = peer.output();
    ClientOutput {
        status,
        pid: peer.pid(),
        stdout: out.clone(),
        stderr: out,
    }
}

/// Runs a client to completion and fails the test unless it exits 0.
pub fn run_client(cmd: Command) -> ClientOutput {
    let desc = format!("{cmd:?}");
    let out = run(cmd, CLIENT_TIMEOUT);
    assert!(
        out.status.success(),
        "client {desc} failed with {}:\n{}",
        out.status,
        out.stdout
    );
    out
}

/// `python3 tests/peers/client.py URL...` with `extra` options.
pub fn python_client(urls: &[String], extra: &[&str]) -> Command {
    let mut cmd = python_script("client.py");
    cmd.args(extra).args(urls);
    cmd
}

/// Starts `python3 tests/peers/flask_app.py --port P [extra]` on 127.0.0.1.
pub fn flask_server(port: u16, extra: &[&str], env: &[(&str, &str)]) -> Peer {
    let mut cmd = python_script("flask_app.py");
    cmd.args(["--port", &port.to_string()]).args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Peer::server("flask_app", cmd, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Starts the Rust helper server on `127.0.0.1:port`.
pub fn rust_server(port: u16) -> Peer {
    let mut cmd = Command::new(rust_server_bin());
    cmd.args(["--bind", &format!("127.0.0.1:{port}")]);
    Peer::server(
        "rust_http_server",
        cmd,
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}
