//! Process changes the agent must hear about when it selects processes by rules of its own
//! (`PROCESS_RULES`): `sched:sched_process_exec` (the process may be another program now)
//! and `sched:sched_process_exit` of a main thread (its pid may be reused). Either takes the
//! process out of `MUTED_PIDS` and reports a `ProcEvent`, so that the agent decides about
//! the pid again at its next connection.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{EventHeader, ProcEvent, counter, kind, proc_op};

use crate::maps::{EVENTS, MUTED_PIDS, PROCESS_RULES, bump, wakeup_flags};

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    changed(bpf_get_current_pid_tgid(), proc_op::EXEC);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // Fires for every thread; the process is gone (its pid free) only with its main thread.
    if (id >> 32) as u32 == id as u32 {
        changed(id, proc_op::EXIT);
    }
    0
}

#[inline(always)]
fn changed(pid_tgid: u64, what: u8) {
    if PROCESS_RULES.load() != 1 {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let _ = MUTED_PIDS.remove(&tgid);
    let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    entry.write(ProcEvent {
        header: EventHeader {
            kind: kind::PROC,
            pid: tgid,
            tid: pid_tgid as u32,
            fd: 0,
            conn_id: 0,
        },
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        what,
        _pad: [0; 7],
    });
    entry.submit(wakeup_flags());
    bump(counter::PROC_EVENTS);
}
