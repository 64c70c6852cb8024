//! Running a long-lived child (the agent) so that Ctrl-C and `kill` reach it, and its exit
//! status, not ours, is what the caller sees.
//!
//! A terminal's Ctrl-C already goes to the whole foreground process group, agent included, so
//! xtask must only survive it and wait. A SIGINT/SIGTERM sent to xtask alone (by `kill`, a CI
//! timeout, a supervisor) is passed on to the child. Telling the two apart by `si_code` keeps
//! the agent from getting Ctrl-C twice.

use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};

/// Pid of the running child, 0 when none.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Spawns `cmd`, forwards SIGINT/SIGTERM sent by another process to it, waits for it.
pub fn run_forwarding(cmd: &mut Command) -> std::io::Result<ExitStatus> {
    // Installed before the spawn: a signal in between is then survived (not forwarded, though).
    // Exec resets handlers, so the child starts with default dispositions.
    install(libc::SIGINT);
    install(libc::SIGTERM);
    let mut child = cmd.spawn()?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    let status = child.wait();
    CHILD.store(0, Ordering::SeqCst);
    status
}

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // si_code > 0 means the kernel raised it (the terminal's Ctrl-C): the child got it too.
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let from_kernel = unsafe { (*info).si_code } > 0;
    let pid = CHILD.load(Ordering::SeqCst);
    if !from_kernel && pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn install(sig: libc::c_int) {
    // SAFETY: a zeroed sigaction is valid; the handler only touches an atomic and calls kill.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = forward;
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGINT sent to xtask by another process (here: itself, via kill) reaches the child,
    /// xtask survives it, and the child's own exit status comes back.
    #[test]
    fn sigint_sent_to_xtask_reaches_the_child() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap 'exit 7' INT; while :; do sleep 0.05; done"]);
        let killer = std::thread::spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            // SAFETY: plain kill of our own pid; run_forwarding has installed its handler.
            unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
        });
        let status = run_forwarding(&mut cmd).expect("spawn sh");
        killer.join().unwrap();
        assert_eq!(status.code(), Some(7));
    }
}
