//! Batched reads of a per-CPU array of `u64` counters (a few per value):
//! `BPF_MAP_LOOKUP_BATCH` (kernel 5.6; aya does not wrap it) copies
//! thousands of entries, every CPU's value of each, in one system call,
//! where a lookup per entry costs a system call each (a million entries:
//! seconds). Kernels without it refuse the command, and the caller falls
//! back to lookups one by one.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd` (kernel 5.6).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`, as the kernel lays it out.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Where the previous call stopped (0: from the start).
    in_batch: u64,
    /// Where this call stopped, for the next.
    out_batch: u64,
    keys: u64,
    values: u64,
    /// Entries wanted; on return, entries copied.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Bytes of values copied per call at most: small enough to stay in
/// cache, large enough that the calls are few (65536 entries on 2 CPUs).
const CHUNK_BYTES: usize = 1 << 20;

/// Whether `err` says the kernel does not do batch lookups (an unknown
/// command, or a map type without them), rather than that this one failed.
#[must_use]
pub(super) fn unsupported(err: &io::Error) -> bool {
    // `ENOTSUPP` (524) is the kernel's internal code, which leaks out of
    // the bpf system call for map types without batch operations.
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    )
}

/// One `BPF_MAP_LOOKUP_BATCH` call: at most `count` entries of `map` into
/// `keys` and `values`, from after the cursor at `after` (`None`: from the
/// start), the cursor to go on from written at `next`. Returns the entries
/// copied, and the call's error (`ENOENT`: the map's end).
///
/// # Safety
///
/// `keys` and `values` must hold `count` keys and values of the map's
/// sizes (a per-CPU value: one per possible CPU), and `after` and `next` a
/// cursor each (a key for an array, 4 bytes for a hash map).
unsafe fn lookup_batch(
    map: BorrowedFd<'_>,
    after: Option<*const u8>,
    next: *mut u8,
    keys: *mut u8,
    values: *mut u8,
    count: u32,
) -> (usize, Option<io::Error>) {
    let mut attr = BatchAttr {
        in_batch: after.map_or(0, |at| at as u64),
        out_batch: next as u64,
        keys: keys as u64,
        values: values as u64,
        count,
        map_fd: u32::try_from(map.as_raw_fd()).expect("a descriptor is not negative"),
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix, passed with its size
    // (the kernel zero-fills the rest); the buffers it points to are as
    // the caller promised, alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &raw mut attr,
            size_of::<BatchAttr>(),
        )
    };
    (
        attr.count as usize,
        (ret < 0).then(io::Error::last_os_error),
    )
}

/// Counts the entries of the hash map `map` (keys of `key_size` bytes,
/// values of `value_size`) with `BPF_MAP_LOOKUP_BATCH` (hash maps: 5.6):
/// a call per few thousand entries, where walking the keys costs a call
/// each.
pub(super) fn count_hash(
    map: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
) -> io::Result<usize> {
    const CHUNK: u32 = 4096;
    let mut keys = vec![0u8; CHUNK as usize * key_size];
    let mut values = vec![0u8; CHUNK as usize * value_size];
    // A hash map's cursor is a bucket index (4 bytes); room for 8.
    let mut after: u64 = 0;
    let mut next: u64 = 0;
    let mut total = 0;
    let mut first = true;
    loop {
        let from = (!first).then_some((&raw const after).cast::<u8>());
        // SAFETY: `keys` and `values` hold `CHUNK` keys and values of the
        // map's sizes, and `after` and `next` a cursor each.
        let (got, err) = unsafe {
            lookup_batch(
                map,
                from,
                (&raw mut next).cast(),
                keys.as_mut_ptr(),
                values.as_mut_ptr(),
                CHUNK,
            )
        };
        total += got;
        if let Some(err) = err {
            // The end of the map.
            return if err.raw_os_error() == Some(libc::ENOENT) {
                Ok(total)
            } else {
                Err(err)
            };
        }
        after = next;
        first = false;
    }
}

/// Reads the values `first..` of the per-CPU array `map`, each value
/// `lanes` `u64` counters (`cpus` possible CPUs, as the kernel lays
/// per-CPU values out), and stores each counter's sum over the CPUs in
/// `out`: lane `l` of value `first + v` at `out[v * lanes + l]`, as many
/// values as `out` has room for.
pub(super) fn sum_per_cpu(
    map: BorrowedFd<'_>,
    cpus: usize,
    lanes: usize,
    first: u32,
    out: &mut [u64],
) -> io::Result<()> {
    let stride = cpus * lanes;
    let chunk = (CHUNK_BYTES / (8 * stride)).max(1);
    let wanted = out.len().div_ceil(lanes);
    let mut keys = vec![0u32; chunk];
    let mut values = vec![0u64; chunk * stride];
    // Each call after the first starts after the value the one before
    // stopped at; the first, after the value before `first` (or at the
    // start: `in_batch` 0).
    let mut after: u32 = first.saturating_sub(1);
    let mut next: u32 = 0;
    let mut done = 0;
    while done < wanted {
        let want = chunk.min(wanted - done);
        let from = (done > 0 || first > 0).then_some((&raw const after).cast::<u8>());
        // SAFETY: `keys` and `values` hold `want` keys and per-CPU values
        // (`lanes` counters of 8 bytes per possible CPU each), and `after`
        // and `next` one key each.
        let (got, err) = unsafe {
            lookup_batch(
                map,
                from,
                (&raw mut next).cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                u32::try_from(want).expect("a chunk fits a u32"),
            )
        };
        for (i, &key) in keys[..got].iter().enumerate() {
            let Some(base) = key.checked_sub(first).map(|v| v as usize * lanes) else {
                continue;
            };
            let per_cpu = &values[i * stride..(i + 1) * stride];
            for (lane, sum) in out.iter_mut().skip(base).take(lanes).enumerate() {
                *sum = per_cpu.iter().skip(lane).step_by(lanes).sum();
            }
        }
        done += got;
        match err {
            // The end of the map: what is left was never there.
            Some(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(err) => return Err(err),
            None if got == 0 => return Ok(()),
            None => after = next,
        }
    }
    Ok(())
}
