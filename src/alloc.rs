//! The process's C-allocator policy. libtorch's CPU tensors come from glibc `malloc`; a buffer above
//! the mmap threshold (at most 32 MiB, e.g. the `(16, 128, 8192)` f32 logits of an SFT step, 64 MiB)
//! is a fresh `mmap` every time and an `munmap` when freed, so each step page-faults and zero-fills
//! every large activation and gradient again: measured on the 2-core machine, ≈ 1.0 s of `sys` time in
//! a 2-s SFT bench and a 270–300 ms step, vs 0.3 s and 200–230 ms once freed memory is kept
//! (`reports/perf.md`, "allocator"). Peak RSS grows by ≈ 100 MB there.
//!
//! [`keep_freed_memory`] switches glibc to serving every size from its heap (`M_MMAP_MAX = 0`) and to
//! never trimming it (`M_TRIM_THRESHOLD` = 2 GiB), the same effect as PyTorch's caching allocators on
//! accelerators. Numerics are unchanged (same kernels, same order). The `rlhf-lab` binary calls it at
//! start-up unless `RLHF_LAB_MALLOC=system` is set; a Python process gets the same with
//! `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647` in its environment.

/// Applies the policy (glibc on Linux; elsewhere a no-op). Returns whether it is in force.
pub fn keep_freed_memory() -> bool {
    if std::env::var("RLHF_LAB_MALLOC").is_ok_and(|v| v == "system") {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: `mallopt` only changes allocator parameters; it is called before any large allocation
    // and returns 1 on success.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}
