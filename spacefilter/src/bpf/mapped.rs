//! Array maps shared with the program through a memory mapping.
//!
//! An array created with `BPF_F_MMAPABLE` (kernel 5.5) can be mapped into
//! the daemon: its values are then plain memory that the program reads with
//! inlined lookups, and an update is a store, with no system call. Each
//! word is stored whole (an atomic store), so the program sees a word
//! either as it was or as it is, never half written; where several words
//! must agree, the callers order their stores (see `tables/mod.rs`).

use std::{
    num::NonZeroUsize,
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64},
};

use aya::maps::{Map, MapData};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::{ListError, MapSource};

/// A mapped array map: `len` bytes of values from `base`.
pub(super) struct Mapped {
    base: NonNull<u8>,
    len: usize,
    /// The map, kept open for as long as the mapping lives.
    _map: MapData,
}

// SAFETY: the mapping is owned by this value and freed only on drop; all
// access to it goes through atomics.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Takes the array map `name` out of the program and maps all of it.
    pub(super) fn take(ebpf: &mut dyn MapSource, name: &'static str) -> Result<Self, ListError> {
        let map = ebpf.take_map(name).ok_or(ListError::MissingMap { name })?;
        let Map::Array(map) = map else {
            return Err(ListError::NotArray { name });
        };
        let info = map
            .info()
            .map_err(|source| ListError::Read { name, source })?;
        // Array values are laid out every value size rounded up to 8 bytes;
        // the mapping covers whole pages.
        let stride = (info.value_size() as usize).next_multiple_of(8);
        let len = stride * info.max_entries() as usize;
        let length = NonZeroUsize::new(len).ok_or(ListError::Mmap {
            name,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: a fresh shared mapping of the map's fd, which the kernel
        // sizes and keeps alive while mapped; nothing else in this process
        // maps it.
        let base = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                map.fd(),
                0,
            )
        }
        .map_err(|errno| ListError::Mmap {
            name,
            source: errno.into(),
        })?;
        Ok(Self {
            base: base.cast(),
            len,
            _map: map,
        })
    }

    /// Bytes mapped.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The `index`th 32-bit word.
    ///
    /// # Panics
    /// If the word lies outside the map.
    pub(super) fn word32(&self, index: usize) -> &AtomicU32 {
        assert!((index + 1) * 4 <= self.len, "word {index} outside the map");
        // SAFETY: inside the mapping (checked above), 4-byte aligned (the
        // mapping is page aligned), and shared memory is only ever accessed
        // through atomics.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(index * 4).cast()) }
    }

    /// The `index`th 64-bit word.
    ///
    /// # Panics
    /// If the word lies outside the map.
    pub(super) fn word64(&self, index: usize) -> &AtomicU64 {
        assert!((index + 1) * 8 <= self.len, "word {index} outside the map");
        // SAFETY: as in `word32`, 8-byte aligned.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(index * 8).cast()) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `take`, of this length, unmapped once;
        // no reference into it outlives `self`.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}
