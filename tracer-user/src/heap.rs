//! The agent's heap (mimalloc, chosen in `main.rs`) around start-up: used by `agent::run`
//! while it loads the probes, before any event flows.
//!
//! Start-up reads the kernel's BTF (5 MiB on these machines) twice: once in `btf.rs` for the
//! socket field offsets and once inside aya's loader, which parses all of it into growing
//! vectors whatever the programs need. mimalloc returns freed memory to the kernel 10 ms
//! after it is freed, so those buffers and every copy left behind by their growth were all
//! resident at once: 31 MiB of anonymous memory that made half of the idle agent's peak RSS
//! and stayed resident afterwards. While a [`PromptPurge`] lives, freed memory goes back at
//! once; when it ends the usual delay returns (purging at once under load costs the agent
//! a fifth more CPU) and what is still held is purged.

use libmimalloc_sys as mi;

/// `mi_option_purge_delay` in mimalloc's option enum (the same in its v2 and v3 headers;
/// `libmimalloc-sys` names no constant for it).
const PURGE_DELAY: mi::mi_option_t = 15;

/// Freed memory is returned to the kernel at once while this lives.
pub struct PromptPurge {
    delay_ms: std::os::raw::c_long,
}

impl PromptPurge {
    pub fn start() -> Self {
        // SAFETY: reading and setting a mimalloc option has no preconditions; options are
        // process-wide and read by the allocator on its next purge decision.
        let delay_ms = unsafe {
            let delay_ms = mi::mi_option_get(PURGE_DELAY);
            mi::mi_option_set(PURGE_DELAY, 0);
            delay_ms
        };
        Self { delay_ms }
    }
}

impl Drop for PromptPurge {
    fn drop(&mut self) {
        // SAFETY: as above; `mi_collect` only frees and purges what is no longer in use.
        unsafe {
            mi::mi_collect(true);
            mi::mi_option_set(PURGE_DELAY, self.delay_ms);
        }
    }
}
