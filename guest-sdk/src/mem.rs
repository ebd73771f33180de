//! `memcmp` for wasm guests, eight bytes at a time.
//!
//! In a `wasm32-wasip2` plugin, `memcmp` comes from wasi-libc: a loop over single bytes.
//! Every ordered comparison of strings and byte slices ends up there — `BTreeMap` keys
//! in particular, and Kubernetes objects are full of maps whose keys share long prefixes
//! (`app.kubernetes.io/…` labels, annotations). Decoding a typed object's metadata spent
//! a noticeable share of a reconcile in that loop (BENCHMARKS.md). This definition takes precedence
//! over wasi-libc's at link time; natively the platform's `memcmp` stays.
//!
//! It reads through raw pointers only: a slice comparison here would call `memcmp`.

/// C's `memcmp`: compares `n` bytes at `a` and `b` as unsigned bytes, answering a
/// negative, zero or positive number as the first difference is lower, absent or higher.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n` and both ranges are readable for `n` bytes.
        let (x, y) = unsafe {
            (
                a.add(i).cast::<u64>().read_unaligned(),
                b.add(i).cast::<u64>().read_unaligned(),
            )
        };
        if x != y {
            // Little-endian: the lowest differing byte comes first in memory.
            let shift = (x ^ y).trailing_zeros() / 8 * 8;
            return ((x >> shift) & 0xff) as i32 - ((y >> shift) & 0xff) as i32;
        }
        i += 8;
    }
    while i < n {
        // SAFETY: `i < n`.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}
