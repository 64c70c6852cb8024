//! Start-up checks, one clear line each, before the probes are loaded.
//!
//! - capabilities: the effective set (`CapEff` in `/proc/self/status`) must allow loading and
//!   attaching tracing programs: CAP_BPF and CAP_PERFMON (kernel >= 5.8), or CAP_SYS_ADMIN;
//!   without them nothing can work (fatal). Missing CAP_SYS_PTRACE / CAP_DAC_READ_SEARCH only
//!   cost resource attributes of other users' processes (warning).
//! - BTF (`/sys/kernel/btf/vmlinux`): without it socket field offsets are guessed (warning).
//! - tracefs: mounted if missing and possible ([`loader::ensure_tracefs`]); else fatal, since
//!   tracepoints cannot be attached.
//! - kernel >= 5.8 for the BPF ring buffer: older kernels cannot run the probes (fatal).

use tracing::{info, warn};

use crate::loader;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Clone, PartialEq)]
pub enum Level {
    Ok,
    Degraded,
    Fatal,
}

/// One check's outcome and its line.
#[derive(Debug, Clone)]
pub struct Check {
    pub level: Level,
    pub line: String,
}

#[derive(Debug, Default)]
pub struct Checks(pub Vec<Check>);

impl Checks {
    pub fn log(&self) {
        for c in &self.0 {
            match c.level {
                Level::Ok => info!("preflight: {}", c.line),
                Level::Degraded => warn!("preflight: {}", c.line),
                Level::Fatal => {}
            }
        }
    }

    /// The first fatal problem's line.
    pub fn fatal(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|c| c.level == Level::Fatal)
            .map(|c| c.line.as_str())
    }
}

/// Runs every check on this machine.
pub fn run() -> Checks {
    let mut out = Vec::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kernel = kernel_version();
    out.push(capabilities(cap_eff(&status), kernel));
    if let Some(v) = kernel {
        out.push(kernel_check(v));
    }
    out.push(if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        Check { level: Level::Ok, line: "BTF present".into() }
    } else {
        Check {
            level: Level::Degraded,
            line: "BTF missing (/sys/kernel/btf/vmlinux; kernel built without CONFIG_DEBUG_INFO_BTF?): socket addresses use guessed offsets and may be wrong".into(),
        }
    });
    out.push(match loader::ensure_tracefs() {
        Ok(()) => Check {
            level: Level::Ok,
            line: "tracefs mounted".into(),
        },
        Err(e) => Check {
            level: Level::Fatal,
            line: format!(
                "tracefs not mounted and cannot be mounted ({e}); mount it at /sys/kernel/tracing"
            ),
        },
    });
    Checks(out)
}

/// `CapEff` of a `/proc/<pid>/status` text.
pub fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| u64::from_str_radix(l.strip_prefix("CapEff:")?.trim(), 16).ok())
}

/// The capability check for an effective set (`None`: unreadable, assume fine).
pub fn capabilities(eff: Option<u64>, kernel: Option<(u32, u32)>) -> Check {
    let Some(eff) = eff else {
        return Check {
            level: Level::Degraded,
            line: "cannot read CapEff from /proc/self/status; assuming the needed capabilities"
                .into(),
        };
    };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let modern = kernel.is_none_or(|v| v >= (5, 8));
    let can_load = has(CAP_SYS_ADMIN) || (modern && has(CAP_BPF) && has(CAP_PERFMON));
    if !can_load {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let need = if modern {
            "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"
        } else {
            "CAP_SYS_ADMIN (kernel < 5.8)"
        };
        let who = if root {
            "running as root but"
        } else {
            "not running as root and"
        };
        let missing: Vec<&str> = [
            (CAP_BPF, "CAP_BPF"),
            (CAP_PERFMON, "CAP_PERFMON"),
            (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        ]
        .into_iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| n)
        .collect();
        return Check {
            level: Level::Fatal,
            line: format!(
                "{who} missing {}: loading eBPF programs needs {need}",
                missing.join(", ")
            ),
        };
    }
    let missing: Vec<&str> = [
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    ]
    .into_iter()
    .filter(|(c, _)| !has(*c) && !has(CAP_SYS_ADMIN))
    .map(|(_, n)| n)
    .collect();
    if missing.is_empty() {
        Check {
            level: Level::Ok,
            line: "capabilities sufficient".into(),
        }
    } else {
        Check {
            level: Level::Degraded,
            line: format!(
                "missing {}: resource attributes (executable, environment) of other users' processes may be incomplete",
                missing.join(", ")
            ),
        }
    }
}

fn kernel_check(v: (u32, u32)) -> Check {
    if v >= (5, 8) {
        Check {
            level: Level::Ok,
            line: format!("kernel {}.{} supports the BPF ring buffer", v.0, v.1),
        }
    } else {
        Check {
            level: Level::Fatal,
            line: format!(
                "kernel {}.{} has no BPF ring buffer (needs >= 5.8)",
                v.0, v.1
            ),
        }
    }
}

/// Major and minor of the running kernel (`uname -r`).
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_release(&release)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_lines() {
        assert_eq!(
            cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
        assert_eq!(
            capabilities(Some(0x1ff_ffff_ffff), Some((6, 1))).level,
            Level::Ok
        );
        let bpf_perfmon = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        let c = capabilities(Some(bpf_perfmon), Some((6, 1)));
        assert_eq!(c.level, Level::Degraded);
        assert!(c.line.contains("CAP_SYS_PTRACE"), "{}", c.line);
        let c = capabilities(Some(bpf_perfmon), Some((5, 4)));
        assert_eq!(c.level, Level::Fatal);
        assert!(c.line.contains("CAP_SYS_ADMIN"), "{}", c.line);
        let c = capabilities(Some(1 << CAP_BPF), Some((6, 1)));
        assert_eq!(c.level, Level::Fatal);
        assert!(
            c.line.contains("missing CAP_PERFMON, CAP_SYS_ADMIN"),
            "{}",
            c.line
        );
        assert!(!c.line.contains('\n'));
    }

    #[test]
    fn kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(kernel_check((5, 7)).level, Level::Fatal);
        assert_eq!(kernel_check((5, 8)).level, Level::Ok);
        assert!(kernel_version().is_some());
    }
}
