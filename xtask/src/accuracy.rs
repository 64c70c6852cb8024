//! `cargo xtask accuracy [-- <benchmark args>]`: set up (with test deps), mount tracefs if
//! needed, build the agent and the benchmark (release), then run the `accuracy` binary of
//! `tracer-tests` as root with `TRACER_BIN` pointing at the agent. Arguments after `--` go to
//! the benchmark (`--scenarios`, `--concurrency`, `--requests`, `--settle-ms`, `--json`).
//! The benchmark's exit code is passed on: 0 whatever the accuracy, non-zero when the run
//! itself failed.

use anyhow::{Context as _, Result, bail};
use std::process::{Command, ExitCode};

use crate::{AGENT_PACKAGE, E2E_PACKAGE, exit_code, proc, setup, signals, target_dir};

const BENCH_BIN: &str = "accuracy";

pub fn accuracy(args: &[String]) -> Result<ExitCode> {
    setup::setup(true)?;
    crate::mount_tracefs()?;
    // Built as the invoking user, so that a non-root developer's target dir gets no root files.
    proc::run(
        "accuracy: build",
        proc::cargo().args([
            "build",
            "--release",
            "-p",
            AGENT_PACKAGE,
            "-p",
            E2E_PACKAGE,
            "--bin",
            "tracer",
            "--bin",
            BENCH_BIN,
        ]),
    )?;
    let release = target_dir()?.join("release");
    let (agent, bench) = (release.join(crate::AGENT_BIN), release.join(BENCH_BIN));
    for bin in [&agent, &bench] {
        if !bin.is_file() {
            bail!(
                "accuracy: build finished but {} does not exist",
                bin.display()
            );
        }
    }
    let tracer_bin = format!("TRACER_BIN={}", agent.display());
    let mut cmd = if proc::is_root() {
        let mut cmd = Command::new(&bench);
        cmd.env("TRACER_BIN", &agent);
        cmd
    } else {
        // Passed as `env` arguments: sudo's env policy may drop variables even with -E.
        let mut cmd = Command::new("sudo");
        let path = format!("PATH={}", std::env::var("PATH").unwrap_or_default());
        cmd.args(["-E", "env", &path, &tracer_bin]).arg(&bench);
        cmd
    };
    cmd.args(args).current_dir(crate::workspace_root());
    eprintln!("accuracy: {tracer_bin} {}", proc::describe(&cmd));
    let status = signals::run_forwarding(&mut cmd)
        .with_context(|| format!("accuracy: could not start {}", bench.display()))?;
    Ok(exit_code(status))
}
