//! Reading fields of a tracepoint's record (the `ctx` every program here gets), at the
//! offsets of the tracepoint's format file.

use aya_ebpf::{EbpfContext, programs::TracePointContext};

/// The field of type `T` at `offset` of the record: a direct load, not a helper call (the
/// verifier allows aligned reads of up to 8 bytes inside a tracepoint record; aya's
/// `read_at` goes through `bpf_probe_read_kernel`, a helper call per field on every hooked
/// syscall).
///
/// # Safety
/// `offset` must be the offset of a field of type `T` in this tracepoint's format, aligned
/// to `size_of::<T>()`.
#[inline(always)]
pub unsafe fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the caller names a field of the record; the verifier checks the access.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(offset) as *const T) }
}
