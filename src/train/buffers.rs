//! Buffers reused from batch to batch, so that training allocates nothing once its first batch
//! has run (tests/allocations.rs counts).
//!
//! Two kinds: a [`Pool`] of whole tensors, which a network takes from and gives back to (its
//! outputs, gradients and tapes), and per-thread [`scratch`] space for the parallel tasks inside
//! a kernel, taken and given back within the task. A buffer taken from either holds whatever it
//! held before: the code that takes one writes all of it, or asks for [`Pool::zeroed`].

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::LocalKey;

/// Spare buffers, of any lengths. Each keeps its length equal to its capacity while spare, so
/// taking one never fills it.
#[derive(Debug, Default)]
pub struct Pool<T> {
    spare: Vec<Vec<T>>,
}

impl<T: Copy + Default> Pool<T> {
    /// A buffer of `len` values with unspecified contents: the smallest spare one that is long
    /// enough, else a new one.
    pub fn take(&mut self, len: usize) -> Vec<T> {
        let mut buffer = self.take_or_make(len, len);
        buffer.truncate(len);
        buffer
    }

    /// The smallest spare buffer of at least `len` values (at its full length), else a new one
    /// of `new_len` (at least `len`).
    fn take_or_make(&mut self, len: usize, new_len: usize) -> Vec<T> {
        let best = self
            .spare
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => self.spare.swap_remove(i),
            None => vec![T::default(); new_len.max(len)],
        }
    }

    /// A buffer of `len` default values (zeros).
    pub fn zeroed(&mut self, len: usize) -> Vec<T> {
        let mut buffer = self.take(len);
        buffer.fill(T::default());
        buffer
    }

    /// A copy of `values` in a spare buffer.
    pub fn copy_of(&mut self, values: &[T]) -> Vec<T> {
        let mut buffer = self.take(values.len());
        buffer.copy_from_slice(values);
        buffer
    }

    /// Keeps `buffer` for a later [`Pool::take`].
    pub fn give(&mut self, mut buffer: Vec<T>) {
        if buffer.capacity() == 0 {
            return;
        }
        // Back to its full length (this fills only what a shorter use cut off).
        buffer.resize(buffer.capacity(), T::default());
        self.spare.push(buffer);
    }
}

/// The buffers a network reuses: float tensors, pool routes (bytes) and gradient masks.
#[derive(Debug, Default)]
pub struct Buffers {
    pub f32: Pool<f32>,
    pub u8: Pool<u8>,
    pub bool: Pool<bool>,
}

/// Element types with per-thread scratch space.
pub trait Scratch: Copy + Default + 'static {
    #[doc(hidden)]
    fn pool() -> &'static LocalKey<RefCell<Pool<Self>>>;
    /// The most values any thread has asked for at once.
    #[doc(hidden)]
    fn most() -> &'static AtomicUsize;
}

thread_local! {
    static F32: RefCell<Pool<f32>> = RefCell::default();
    static USIZE: RefCell<Pool<usize>> = RefCell::default();
}

static MOST_F32: AtomicUsize = AtomicUsize::new(0);
static MOST_USIZE: AtomicUsize = AtomicUsize::new(0);

impl Scratch for f32 {
    fn pool() -> &'static LocalKey<RefCell<Pool<f32>>> {
        &F32
    }
    fn most() -> &'static AtomicUsize {
        &MOST_F32
    }
}

impl Scratch for usize {
    fn pool() -> &'static LocalKey<RefCell<Pool<usize>>> {
        &USIZE
    }
    fn most() -> &'static AtomicUsize {
        &MOST_USIZE
    }
}

/// Runs `f` on `len` values of this thread's scratch space (unspecified contents). Calls may
/// nest: each gets its own buffer, kept by the thread for its next call. A buffer lent for
/// fewer values than it holds is not cut: taking and giving it back touch none of its values.
/// A thread that must make a buffer makes it as long as the longest any thread has asked for:
/// which thread runs which task varies from batch to batch, and so a thread's first buffers
/// serve whatever it is given later.
pub fn scratch<T: Scratch, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let most = T::most().fetch_max(len, Ordering::Relaxed).max(len);
    let mut buffer = T::pool().with(|pool| pool.borrow_mut().take_or_make(len, most));
    let result = f(&mut buffer[..len]);
    T::pool().with(|pool| pool.borrow_mut().spare.push(buffer));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_at_any_shorter_length() {
        let mut pool = Pool::<f32>::default();
        let a = pool.take(100);
        let address = a.as_ptr();
        pool.give(a);
        let b = pool.take(40);
        assert_eq!((b.len(), b.as_ptr()), (40, address));
        pool.give(b);
        // Given back at its full length: a longer request fits it again.
        let c = pool.zeroed(100);
        assert_eq!(c.as_ptr(), address);
        assert!(c.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn the_smallest_buffer_that_fits_is_taken() {
        let mut pool = Pool::<u8>::default();
        let (big, small) = (pool.take(1000), pool.take(10));
        let small_address = small.as_ptr();
        pool.give(big);
        pool.give(small);
        let taken = pool.take(8);
        assert_eq!(taken.as_ptr(), small_address);
        // Too long for any spare buffer: a new one.
        assert_eq!(pool.take(2000).len(), 2000);
    }

    #[test]
    fn nested_scratch_gets_separate_buffers() {
        let sum = scratch::<f32, _>(8, |outer| {
            outer.fill(1.0);
            scratch::<f32, _>(8, |inner| {
                inner.fill(2.0);
                outer.iter().sum::<f32>() + inner.iter().sum::<f32>()
            })
        });
        assert_eq!(sum, 24.0);
    }
}
