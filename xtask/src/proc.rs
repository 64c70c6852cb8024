//! Small helpers for running other programs: root detection, `sudo` only when needed, PATH
//! look-ups, and running a command with an error that names the step it belonged to.

use anyhow::{Context as _, Result, bail};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` as root: directly when we are root, else through `sudo -E`
/// (never `sudo` when already root: minimal containers and CI images often lack it).
pub fn as_root(program: impl Into<OsString>) -> Command {
    let program = program.into();
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(program);
        cmd
    }
}

/// `cargo` as invoked by the user (the `CARGO` cargo sets for `cargo xtask`), in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(cargo_program());
    cmd.current_dir(crate::workspace_root());
    cmd
}

pub fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Renders a command as a shell-like line for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited stdio; fails with an error naming `step` unless it exits 0.
pub fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let status = status(step, cmd)?;
    if !status.success() {
        bail!("{step} failed: `{}` exited with {}", describe(cmd), status);
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio and returns its exit status (spawn failure is an error).
pub fn status(step: &str, cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("{step}: could not start `{}`", describe(cmd)))
}

/// Stdout of `cmd` if it starts and exits 0; `None` otherwise. For checks, where "not there"
/// and "not working" mean the same thing.
pub fn stdout_if_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first executable named `name` in PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Directory `cargo install` puts binaries in.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(home) => Some(PathBuf::from(home).join("bin")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")),
    }
}

/// Makes sure binaries installed by `cargo install` (bpf-linker) are found by this process and
/// its children, also on machines whose login PATH lacks `~/.cargo/bin`.
pub fn put_cargo_bin_on_path() {
    let Some(bin) = cargo_bin_dir() else { return };
    let current = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&current).any(|p| p == bin) {
        return;
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&current)));
    if let Ok(joined) = joined {
        // SAFETY: called at the start of main, before any other thread exists.
        unsafe { std::env::set_var("PATH", joined) };
    }
}
