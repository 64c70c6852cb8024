//! Spawning the real `tracer` agent.
//!
//! The binary is `$TRACER_BIN`, else `<workspace>/target/release/tracer`.
//! [`Agent::start`] captures its stdout/stderr into memory, waits for the
//! `tracer ready` line, and the guard SIGKILLs the agent on drop. When the
//! test is panicking, the drop prints everything the agent logged.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::receiver::Receiver;

/// How long the agent may take to attach its probes.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to exit after SIGTERM/SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// `--settle-ms` the tests pass, to keep them quick.
pub const TEST_SETTLE_MS: u32 = 300;

/// Path of the agent binary; fails the test clearly if it does not exist.
pub fn agent_binary() -> PathBuf {
    let path = match std::env::var_os("TRACER_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::workspace_root().join("target/release/tracer"),
    };
    assert!(
        path.is_file(),
        "agent binary not found at {} - build it with `cargo build --release -p tracer-user` \
         (or `cargo xtask build`) or point TRACER_BIN at it",
        path.display()
    );
    path
}

/// Arguments for one agent run; [`AgentArgs::grpc`] / [`AgentArgs::http`]
/// pre-fill the endpoint and a short settle time.
#[derive(Clone, Debug, Default)]
pub struct AgentArgs {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Replaces the agent binary (program and leading arguments); only for
    /// the harness's own self-tests with a stand-in agent.
    program: Option<(PathBuf, Vec<String>)>,
}

impl AgentArgs {
    /// No arguments at all.
    pub fn empty() -> Self {
        Self::default()
    }
    /// Export to the receiver's gRPC endpoint, `--settle-ms 300`, `--log-level info`.
    pub fn grpc(receiver: &Receiver) -> Self {
        Self::empty()
            .args([
                "--otlp-endpoint",
                &receiver.grpc_endpoint(),
                "--otlp-protocol",
                "grpc",
            ])
            .defaults()
    }
    /// Export to the receiver's HTTP/protobuf endpoint.
    pub fn http(receiver: &Receiver) -> Self {
        Self::empty()
            .args([
                "--otlp-endpoint",
                &receiver.http_endpoint(),
                "--otlp-protocol",
                "http/protobuf",
            ])
            .defaults()
    }
    /// `--settle-ms 300` and `--log-level` from `E2E_AGENT_LOG_LEVEL` (default
    /// `info`; `debug` makes every crate chatty, so it is opt-in).
    fn defaults(self) -> Self {
        let level = std::env::var("E2E_AGENT_LOG_LEVEL").unwrap_or_else(|_| "info".into());
        self.args([
            "--settle-ms",
            &TEST_SETTLE_MS.to_string(),
            "--log-level",
            &level,
        ])
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, it: I) -> Self {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }
    /// Adds `--port P` for each port.
    pub fn ports(mut self, ports: &[u16]) -> Self {
        for p in ports {
            self.args.push("--port".into());
            self.args.push(p.to_string());
        }
        self
    }
    /// Runs `program leading...` instead of the real agent (harness self-tests).
    pub fn stand_in(mut self, program: impl Into<PathBuf>, leading: &[&str]) -> Self {
        self.program = Some((
            program.into(),
            leading.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A running agent. Killed on drop; its log is printed if the test panicked.
pub struct Agent {
    child: Option<Child>,
    pid: u32,
    log: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl Agent {
    /// Spawns the agent without waiting for readiness.
    pub fn spawn(args: &AgentArgs) -> Agent {
        crate::require_root();
        let (bin, leading) = match &args.program {
            Some((p, l)) => (p.clone(), l.clone()),
            None => (agent_binary(), Vec::new()),
        };
        let mut cmd = Command::new(&bin);
        cmd.args(&leading)
            .args(&args.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_BACKTRACE", "1");
        // The agent reads OTEL_* and TRACER_* variables as flag fallbacks, and
        // watches a Kubernetes API when it finds one (in-cluster variables or
        // KUBECONFIG) and NODE_NAME; the caller's own settings must not leak into
        // a test.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("OTEL_")
                || k.starts_with("TRACER_")
                || k.starts_with("KUBERNETES_")
                || k == "KUBECONFIG"
                || k == "NODE_NAME"
            {
                cmd.env_remove(&*k);
            }
        }
        for (k, v) in &args.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn agent {}: {e}", bin.display()));
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stderr.take() {
            readers.push(pump(out, "stderr", log.clone()));
        }
        if let Some(out) = child.stdout.take() {
            readers.push(pump(out, "stdout", log.clone()));
        }
        eprintln!(
            "[agent] started pid {} : {} {}",
            child.id(),
            bin.display(),
            args.args.join(" ")
        );
        Agent {
            pid: child.id(),
            child: Some(child),
            log,
            readers,
            exit: None,
        }
    }

    /// Spawns the agent and waits for `tracer ready` (fails the test if it
    /// exits first or does not get ready within [`READY_TIMEOUT`]).
    pub fn start(args: &AgentArgs) -> Agent {
        let mut agent = Agent::spawn(args);
        agent.wait_ready();
        agent
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the agent wrote so far (stderr and stdout lines, tagged).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.log().lines().any(|l| l.contains("tracer ready")) {
                return;
            }
            if let Some(status) = self.try_wait() {
                self.join_readers();
                panic!(
                    "agent exited with {status} before logging `tracer ready` \
                     (is BPF available? running as root?). Its output:\n{}",
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "agent did not log `tracer ready` within {READY_TIMEOUT:?}. Its output:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
        {
            self.exit = child.try_wait().expect("try_wait on agent");
        }
        self.exit
    }

    /// Waits up to `timeout` for the agent to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                self.join_readers();
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits up to [`STOP_TIMEOUT`] for the exit status;
    /// fails the test if the agent is still running then.
    pub fn stop_with(&mut self, signal: i32) -> ExitStatus {
        if self.try_wait().is_none() {
            // SAFETY: plain kill(2) on the pid of our own child, which has not been reaped.
            unsafe { libc::kill(self.pid as i32, signal) };
        }
        match self.wait_exit(STOP_TIMEOUT) {
            Some(s) => s,
            None => panic!(
                "agent did not exit within {STOP_TIMEOUT:?} after signal {signal}. Its output:\n{}",
                self.log()
            ),
        }
    }

    /// SIGTERM, then asserts a zero exit status within [`STOP_TIMEOUT`].
    pub fn stop(&mut self) -> ExitStatus {
        let status = self.stop_with(libc::SIGTERM);
        assert!(
            status.success(),
            "agent exited with {status} after SIGTERM (expected 0). Its output:\n{}",
            self.log()
        );
        status
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

fn pump(
    stream: impl Read + Send + 'static,
    tag: &'static str,
    log: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let mut log = log.lock().unwrap();
                    // Keep memory bounded even with a chatty debug log.
                    if log.len() < 8 << 20 {
                        log.push_str(&format!("[{tag}] {}", text.trim_end_matches('\n')));
                        log.push('\n');
                    }
                }
            }
        }
    })
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && self.exit.is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_readers();
        if std::thread::panicking() {
            let log = self.log();
            // The tail is what matters for a failing test; cap what we print.
            let tail = if log.len() > 64 << 10 {
                let mut cut = log.len() - (64 << 10);
                while !log.is_char_boundary(cut) {
                    cut += 1;
                }
                &log[cut..]
            } else {
                &log[..]
            };
            eprintln!(
                "----- agent (pid {}) output -----\n{tail}----- end of agent output -----",
                self.pid
            );
        }
    }
}
