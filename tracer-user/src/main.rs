//! `tracer`: parses the configuration, sets up logging to stderr (stdout carries the span
//! trees when no OTLP endpoint is set) and runs the agent. Start-up failures print one line
//! and exit non-zero.

use tracer::{
    agent,
    config::{Config, LoadError},
};
use tracing_subscriber::EnvFilter;

/// The span pipeline allocates and frees small objects at a high rate on every thread;
/// glibc's malloc spent about a fifth of the agent's CPU there under nginx load (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    let config = match Config::load() {
        Ok(config) => config,
        Err(LoadError::File(line)) => {
            eprintln!("tracer: {line}");
            return std::process::ExitCode::from(2);
        }
        Err(LoadError::Clap(e)) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
        Err(LoadError::Clap(e)) => {
            // One clear line, not clap's multi-line usage block.
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("tracer: {first} (see tracer --help)");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_new(config.log_filter()).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tracer: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Keeps the agent's heap in 4 KiB pages. mimalloc asks for transparent huge pages on the
/// arenas it commits, and with THP in `madvise` mode (Debian's default) a few live objects then
/// hold whole 2 MiB pages: 12 MiB of the idle agent's 21 MiB of anonymous memory, and about
/// 20 MiB of its peak RSS under nginx load (`cargo xtask bench`). The agent's heap is small and
/// short-lived, so huge pages buy it nothing measurable. Best effort: an old kernel without
/// `PR_SET_THP_DISABLE` only costs the memory.
fn no_transparent_huge_pages() {
    // SAFETY: prctl with integer arguments only; it changes this process's THP policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
