//! `cargo xtask setup [--test-deps]`: checks each prerequisite first and prints one line per
//! item, then installs only what is missing. Everything present costs a few process starts.
//!
//! Order matters: Debian packages (one `apt-get update`, one `apt-get install`) come first since
//! bpf-linker builds against LLVM 22 and pip may itself be one of them; then the nightly
//! `rust-src`, bpf-linker, and for tests the Python packages the test peers import.

use crate::proc::{self, as_root, find_in_path, run, stdout_if_ok};
use anyhow::{Context as _, Result, bail};
use std::path::Path;
use std::process::{Command, Stdio};

/// LLVM the eBPF link uses; its major must equal the nightly rustc's LLVM major.
const LLVM_MAJOR: &str = "22";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_APT_PACKAGE: &str = "llvm-22-dev";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Python packages the e2e test peers use: (pip package, module whose import proves it).
pub const PYTHON_TEST_PACKAGES: &[(&str, &str)] = &[
    ("flask", "flask"),
    ("requests", "requests"),
    ("waitress", "waitress"),
    ("kubernetes-validate", "kubernetes_validate"),
    ("thriftpy2", "thriftpy2"),
    ("thrift", "thrift"),
    ("fastapi", "fastapi"),
    ("uvicorn", "uvicorn"),
    ("httpx", "httpx"),
    ("py_zipkin", "py_zipkin"),
    ("opentelemetry-sdk", "opentelemetry.sdk.trace"),
    (
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry.exporter.otlp.proto.http",
    ),
    (
        "opentelemetry-instrumentation-flask",
        "opentelemetry.instrumentation.flask",
    ),
    (
        "opentelemetry-instrumentation-requests",
        "opentelemetry.instrumentation.requests",
    ),
];

/// Runs the whole set-up; `test_deps` adds what the tests need on top of the build toolchain.
pub fn setup(test_deps: bool) -> Result<()> {
    let mut apt = Vec::new();
    check_llvm(&mut apt);
    if test_deps {
        check_test_tools(&mut apt);
    }
    install_apt_packages(&apt)?;
    ensure_rust_src()?;
    check_nightly_llvm();
    ensure_bpf_linker()?;
    if test_deps {
        ensure_python_packages()?;
    }
    Ok(())
}

fn ok(item: &str) {
    eprintln!("setup: ok       {item}");
}

fn missing(item: &str) {
    eprintln!("setup: missing  {item}; installing");
}

fn warn(msg: &str) {
    eprintln!("setup: warning  {msg}");
}

// ---- Debian packages ----

fn check_llvm(apt: &mut Vec<&'static str>) {
    let prefix = Path::new(LLVM_PREFIX);
    let lib = ["lib/libLLVM.so", "lib/libLLVM-22.so"]
        .iter()
        .map(|l| prefix.join(l))
        .find(|p| p.exists());
    let config = prefix.join("bin/llvm-config");
    match lib {
        Some(lib) if config.exists() => ok(&format!("{LLVM_APT_PACKAGE} ({})", lib.display())),
        _ => {
            missing(&format!(
                "{LLVM_APT_PACKAGE} (no {LLVM_PREFIX}/lib/libLLVM.so or bin/llvm-config)"
            ));
            apt.push(LLVM_APT_PACKAGE);
        }
    }
}

fn check_test_tools(apt: &mut Vec<&'static str>) {
    for (tool, package) in [("ip", "iproute2"), ("curl", "curl")] {
        check_tool(apt, tool, package);
    }
    if find_in_path("python3").is_none() {
        missing("python3");
        apt.extend(["python3", "python3-pip"]);
        return;
    }
    if stdout_if_ok(Command::new("python3").args(["-m", "pip", "--version"])).is_some() {
        ok("pip (python3 -m pip)");
    } else {
        missing("pip (python3 -m pip)");
        apt.push("python3-pip");
    }
}

pub(crate) fn check_tool(apt: &mut Vec<&'static str>, tool: &str, package: &'static str) {
    match find_in_path(tool) {
        Some(path) => ok(&format!("{package} ({})", path.display())),
        None => {
            missing(&format!("{package} (no `{tool}` in PATH)"));
            apt.push(package);
        }
    }
}

/// One `apt-get update`, then one `apt-get install` of everything missing; nothing when empty.
pub(crate) fn install_apt_packages(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if find_in_path("apt-get").is_none() {
        bail!(
            "setup: apt-get not found; install these packages by hand (or their equivalents): {}",
            packages.join(" ")
        );
    }
    let step = format!("setup: installing Debian packages ({})", packages.join(" "));
    eprintln!("{step}");
    run("setup: apt-get update", apt_get().arg("update"))?;
    run(
        &step,
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages),
    )
}

fn apt_get() -> Command {
    let mut cmd = as_root("env");
    cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get", "-q"]);
    cmd.stdin(Stdio::null());
    cmd
}

// ---- Rust toolchain ----

fn ensure_rust_src() -> Result<()> {
    if find_in_path("rustup").is_none() {
        bail!(
            "setup: rustup not found in PATH; the eBPF build needs rustup with a nightly toolchain"
        );
    }
    let installed = stdout_if_ok(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        Some(list)
            if list
                .lines()
                .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src")) =>
        {
            ok("nightly toolchain with rust-src");
            Ok(())
        }
        Some(_) => {
            missing("rust-src for the nightly toolchain");
            run(
                "setup: rustup component add rust-src",
                Command::new("rustup").args([
                    "component",
                    "add",
                    "rust-src",
                    "--toolchain",
                    "nightly",
                ]),
            )
        }
        None => {
            missing("nightly toolchain (with rust-src)");
            run(
                "setup: rustup toolchain install nightly",
                Command::new("rustup").args([
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ]),
            )
        }
    }
}

/// bpf-linker reads the bitcode nightly rustc emits: their LLVM majors must match. Only warns,
/// since a newer nightly is fixed by pinning a toolchain, not by anything set-up can install.
fn check_nightly_llvm() {
    let Some(verbose) =
        stdout_if_ok(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
    else {
        warn("could not run `rustup run nightly rustc -vV`");
        return;
    };
    let llvm = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .unwrap_or("unknown");
    if llvm.split('.').next() == Some(LLVM_MAJOR) {
        ok(&format!("nightly rustc uses LLVM {llvm}"));
    } else {
        warn(&format!(
            "nightly rustc uses LLVM {llvm}, bpf-linker is built against LLVM {LLVM_MAJOR}: the eBPF link may fail"
        ));
    }
}

fn ensure_bpf_linker() -> Result<()> {
    let version = bpf_linker_version();
    let wanted = BPF_LINKER_VERSION
        .rsplit_once('.')
        .map_or(BPF_LINKER_VERSION, |(minor, _)| minor);
    let mut install = proc::cargo();
    install
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ]);
    match version {
        Some(v) if v.starts_with(&format!("{wanted}.")) => {
            ok(&format!("bpf-linker {v}"));
            return Ok(());
        }
        Some(v) => {
            missing(&format!("bpf-linker {wanted}.x (found {v}, replacing it)"));
            install.arg("--force");
        }
        None => missing(&format!("bpf-linker {wanted}.x")),
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {LLVM_PREFIX} (about 1-2 minutes)"
    );
    run("setup: cargo install bpf-linker", &mut install)?;
    match bpf_linker_version() {
        Some(v) if v.starts_with(&format!("{wanted}.")) => Ok(()),
        other => bail!(
            "setup: bpf-linker was installed but `bpf-linker --version` reports {}; is {} in PATH?",
            other.map_or_else(|| "nothing".to_owned(), |v| format!("version {v}")),
            proc::cargo_bin_dir()
                .map_or_else(|| "~/.cargo/bin".into(), |d| d.display().to_string())
        ),
    }
}

/// Version from `bpf-linker --version` ("bpf-linker 0.13.0"), `None` if absent or broken
/// (for example when the LLVM library it was linked against is gone).
fn bpf_linker_version() -> Option<String> {
    let out = stdout_if_ok(Command::new("bpf-linker").arg("--version"))?;
    out.split_whitespace().nth(1).map(str::to_owned)
}

// ---- Python packages for the test peers ----

fn ensure_python_packages() -> Result<()> {
    ensure_python(PYTHON_TEST_PACKAGES)
}

/// Checks that each `(pip package, module)` imports in `python3`; pip-installs the ones that
/// do not, in one call. Also used by `cargo xtask bench`.
pub(crate) fn ensure_python(wanted: &[(&'static str, &'static str)]) -> Result<()> {
    let missing_now = missing_python_modules(wanted)?;
    for (package, _) in wanted.iter().filter(|p| !missing_now.contains(p)) {
        ok(&format!("python: {package}"));
    }
    if missing_now.is_empty() {
        return Ok(());
    }
    for (package, _) in &missing_now {
        missing(&format!("python: {package}"));
    }
    let packages: Vec<&str> = missing_now.iter().map(|(p, _)| *p).collect();
    pip_install(&packages)?;
    let still = missing_python_modules(wanted)?;
    if !still.is_empty() {
        let names: Vec<&str> = still.iter().map(|(p, _)| *p).collect();
        bail!(
            "setup: pip install succeeded but these still do not import in python3: {}",
            names.join(" ")
        );
    }
    Ok(())
}

/// Tries to import each module in one `python3` process; returns the entries that failed.
fn missing_python_modules(
    wanted: &[(&'static str, &'static str)],
) -> Result<Vec<(&'static str, &'static str)>> {
    const SCRIPT: &str = "import importlib, sys\n\
        for m in sys.argv[1:]:\n\
        \x20   try:\n\
        \x20       importlib.import_module(m)\n\
        \x20   except Exception:\n\
        \x20       print(m)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(wanted.iter().map(|(_, module)| module))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("setup: could not run python3 to check the test packages")?;
    if !out.status.success() {
        bail!("setup: python3 import check exited with {}", out.status);
    }
    let failed = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<&str> = failed.lines().map(str::trim).collect();
    Ok(wanted
        .iter()
        .copied()
        .filter(|(_, m)| failed.contains(m))
        .collect())
}

/// One pip call for all packages; retried with `--break-system-packages` when pip refuses to
/// touch an externally managed (distribution) Python, as Debian 12's is.
fn pip_install(packages: &[&str]) -> Result<()> {
    let step = format!("setup: pip install {}", packages.join(" "));
    eprintln!("{step}");
    let first = pip(packages, false)
        .output()
        .context("setup: could not run `python3 -m pip`")?;
    let stderr = String::from_utf8_lossy(&first.stderr);
    if first.status.success() {
        eprint!("{stderr}");
        return Ok(());
    }
    if !stderr.contains("externally-managed-environment") {
        eprint!("{stderr}");
        bail!("{step} failed with {}", first.status);
    }
    eprintln!("setup: this python3 is externally managed; retrying with --break-system-packages");
    run(&step, &mut pip(packages, true))
}

fn pip(packages: &[&str], break_system: bool) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    // pip's warning about running as root is noise on CI; older pips ignore the variable.
    .env("PIP_ROOT_USER_ACTION", "ignore")
    .stdin(Stdio::null());
    if break_system {
        cmd.arg("--break-system-packages");
    }
    cmd.args(packages);
    cmd
}
