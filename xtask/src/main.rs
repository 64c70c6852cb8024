//! Developer and CI commands for `tracer`, run as `cargo xtask <command>`.
//!
//! - `setup [--test-deps]`: checks the eBPF toolchain (LLVM 22 from apt, nightly `rust-src`,
//!   bpf-linker 0.13) and installs what is missing; `--test-deps` adds the Debian tools and
//!   Python packages the end-to-end tests use. Idempotent: one "ok" line per item when present.
//! - `build`: setup, then `cargo build --release -p tracer-user` (release only, so the eBPF
//!   crate is compiled once).
//! - `run [-- <agent args>]`: build, then run `target/release/tracer` as root (via `sudo -E`
//!   when not root); Ctrl-C reaches the agent, whose exit code is passed on.
//! - `test`: setup with test deps, mount tracefs if needed, build, then the workspace's unit and
//!   replay tests and the end-to-end tests (`tracer-tests`, one at a time, as root, with
//!   `TRACER_BIN` set). Ends with one summary line; exits non-zero if any step failed.
//! - `accuracy [-- <args>]`: setup with test deps, release build, then the trace accuracy
//!   benchmark (`tracer-tests`' `accuracy` binary) as root; see `bench/accuracy/README.md`.
//! - `bench [--duration S] [--quick] [--only nginx,chain,flask,capacity]`: overhead and capacity
//!   benchmark (see `bench.rs` and `bench/overhead/README.md`).
//!
//! Progress lines go to stderr, so that with `run` stdout carries only what the agent prints.
//! `.ci/run` calls `cargo xtask test`, so CI and developers run the same thing.

mod accuracy;
mod bench;
mod proc;
mod setup;
mod signals;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Package holding the agent binary, and the binary's name.
const AGENT_PACKAGE: &str = "tracer-user";
const AGENT_BIN: &str = "tracer";
/// Crate with the end-to-end tests (they load eBPF programs, so they run as root, one at a time).
const E2E_PACKAGE: &str = "tracer-tests";
/// Never built for the host: it is `no_std` and is built for bpfel by tracer-user's build script.
const EBPF_PACKAGE: &str = "tracer-ebpf";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer and CI commands for tracer"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the build toolchain and install what is missing (idempotent).
    Setup {
        /// Also the Debian tools and Python packages the tests use.
        #[arg(long)]
        test_deps: bool,
    },
    /// Set up, then build the agent (release).
    Build,
    /// Build, then run the agent as root: `cargo xtask run -- --otlp-endpoint http://localhost:4317`.
    Run {
        /// Arguments for the agent.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up with test deps, build, run all tests (end-to-end ones as root). CI runs this.
    Test,
    /// Measure trace accuracy on multi-service scenarios: `cargo xtask accuracy -- --requests 100`.
    Accuracy {
        /// Arguments for the benchmark (`--scenarios`, `--concurrency`, `--requests`, `--json`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Overhead and capacity benchmark (nginx, nginx chain, Flask; agent cost). Runs as root.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    proc::put_cargo_bin_on_path();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup { test_deps } => setup::setup(test_deps).map(|()| ExitCode::SUCCESS),
        Cmd::Build => build().map(|_| ExitCode::SUCCESS),
        Cmd::Run { args } => run_agent(&args),
        Cmd::Test => test(),
        Cmd::Accuracy { args } => accuracy::accuracy(&args),
        Cmd::Bench(args) => bench::bench(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: error: {e:#}");
        ExitCode::FAILURE
    })
}

/// Directory of the workspace's root Cargo.toml.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Cargo's target directory (honours CARGO_TARGET_DIR and `build.target-dir`).
pub(crate) fn target_dir() -> Result<PathBuf> {
    let out = proc::cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not run `cargo metadata`")?;
    if !out.status.success() {
        bail!("`cargo metadata` exited with {}", out.status);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing `cargo metadata` output")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` output has no target_directory")
}

/// Setup, then the release build of the agent; returns the agent binary's absolute path.
fn build() -> Result<PathBuf> {
    setup::setup(false)?;
    build_agent()
}

fn build_agent() -> Result<PathBuf> {
    proc::run(
        "build",
        proc::cargo().args(["build", "--release", "-p", AGENT_PACKAGE]),
    )?;
    let bin = target_dir()?.join("release").join(AGENT_BIN);
    if !bin.is_file() {
        bail!("build: finished but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// Runs the agent as root with `args`, passing SIGINT/SIGTERM on and returning its exit code.
fn run_agent(args: &[String]) -> Result<ExitCode> {
    let bin = build()?;
    let mut cmd = proc::as_root(&bin);
    cmd.args(args);
    eprintln!("run: {}", proc::describe(&cmd));
    let status = signals::run_forwarding(&mut cmd)
        .with_context(|| format!("run: could not start {}", bin.display()))?;
    Ok(exit_code(status))
}

/// The child's exit code, or 128+signal when it was killed, as shells report it.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn test() -> Result<ExitCode> {
    setup::setup(true)?;
    mount_tracefs()?;
    let bin = build_agent()?;
    let unit = run_unit_tests()?;
    let e2e = run_e2e_tests(&bin)?;
    let verdict = |ok: bool| if ok { "passed" } else { "FAILED" };
    println!(
        "xtask test: {} (unit and replay tests {}, end-to-end tests {})",
        verdict(unit && e2e).to_uppercase(),
        verdict(unit),
        verdict(e2e)
    );
    Ok(if unit && e2e {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The tracepoints the agent attaches to live in tracefs; some minimal systems do not mount it.
pub(crate) fn mount_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        eprintln!("setup: ok       tracefs (/sys/kernel/tracing)");
        return Ok(());
    }
    eprintln!("setup: mounting tracefs at /sys/kernel/tracing");
    proc::run(
        "test: mount tracefs",
        proc::as_root("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]),
    )
}

/// Every workspace crate's tests except the end-to-end crate (and the eBPF crate, which has no
/// host build), and a check that the fuzz targets compile. Returns whether all passed.
fn run_unit_tests() -> Result<bool> {
    let mut cmd = proc::cargo();
    cmd.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        EBPF_PACKAGE,
        "--exclude",
        E2E_PACKAGE,
    ]);
    eprintln!("test: {}", proc::describe(&cmd));
    let unit = proc::status("test: unit and replay tests", &mut cmd)?.success();
    // The fuzz targets live in their own workspace (cargo-fuzz): check that they still
    // compile against the parsers they drive, or they rot unseen.
    let mut fuzz = proc::cargo();
    fuzz.env("AYA_BUILD_SKIP", "1")
        .args(["check", "--manifest-path", "fuzz/Cargo.toml", "--bins"]);
    eprintln!("test: AYA_BUILD_SKIP=1 {}", proc::describe(&fuzz));
    let fuzz = proc::status("test: fuzz targets compile", &mut fuzz)?.success();
    Ok(unit && fuzz)
}

/// The end-to-end tests, one at a time, as root. They are compiled as the invoking user first,
/// so that a non-root developer's target directory gets no root-owned files.
fn run_e2e_tests(bin: &Path) -> Result<bool> {
    let test_args = ["test", "--release", "-p", E2E_PACKAGE];
    let mut compile = proc::cargo();
    compile.args(test_args).arg("--no-run");
    if !proc::status("test: compile end-to-end tests", &mut compile)?.success() {
        return Ok(false);
    }
    let tracer_bin = format!("TRACER_BIN={}", bin.display());
    let mut cmd = if proc::is_root() {
        let mut cmd = proc::cargo();
        cmd.env("TRACER_BIN", bin);
        cmd
    } else {
        // Passed as `env` arguments: sudo's env policy may drop variables even with -E.
        let mut cmd = Command::new("sudo");
        let path = format!("PATH={}", std::env::var("PATH").unwrap_or_default());
        cmd.args(["-E", "env", &path, &tracer_bin])
            .arg(proc::cargo_program())
            .current_dir(workspace_root());
        cmd
    };
    cmd.args(test_args).args(["--", "--test-threads=1"]);
    eprintln!("test: {tracer_bin} {}", proc::describe(&cmd));
    Ok(proc::status("test: end-to-end tests", &mut cmd)?.success())
}
