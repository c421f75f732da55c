//! Memory that ends exactly where an inaccessible page begins: a read or write one byte past
//! the end is a segmentation fault, so a test passing with it shows that code stays inside.

/// `len` bytes (zeroed) whose last byte is the last one before a `PROT_NONE` page.
pub struct Guarded {
    base: *mut libc::c_void,
    mapped: usize,
    len: usize,
}

impl Guarded {
    pub fn new(len: usize) -> Guarded {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let pages = len.div_ceil(page).max(1);
        let mapped = (pages + 1) * page;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches
        // no existing memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(base != libc::MAP_FAILED, "mmap of {mapped} bytes failed");
        // SAFETY: the last page lies inside the mapping just made, which nothing else uses.
        let guard = unsafe { base.cast::<u8>().add(pages * page) };
        // SAFETY: `guard` is the mapping's last page; no reference to it exists.
        let rc = unsafe { libc::mprotect(guard.cast(), page, libc::PROT_NONE) };
        assert_eq!(rc, 0, "mprotect failed");
        Guarded { base, mapped, len }
    }

    /// The bytes, ending at the guard page.
    pub fn bytes(&mut self) -> &mut [u8] {
        let page_end = self.mapped - self.page();
        // SAFETY: `page_end - len .. page_end` lies inside the readable and writable part of
        // the mapping this value owns; the borrow of `self` keeps it unique.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.cast::<u8>().add(page_end - self.len),
                self.len,
            )
        }
    }

    /// The bytes as f32 values (`len` must be a multiple of 4; the end of a page is aligned).
    pub fn f32s(&mut self) -> &mut [f32] {
        assert!(self.len.is_multiple_of(4));
        let bytes = self.bytes();
        let (head, values, tail) = {
            // SAFETY: every bit pattern is a valid f32 and the start is 4-byte aligned because
            // the end (a page boundary) is and the length is a multiple of 4.
            unsafe { bytes.align_to_mut::<f32>() }
        };
        assert!(head.is_empty() && tail.is_empty());
        values
    }

    fn page(&self) -> usize {
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: `base` and `mapped` are the mapping `new` made; no slice of it outlives `self`.
        unsafe { libc::munmap(self.base, self.mapped) };
    }
}
