//! Per-node timing of compiled code, for `qatc bench --layers`: a model compiled with
//! [`super::Model::compile_profiled`] calls [`mark`] before each node and after the last, and the
//! time between two marks is the node's (including the layout changes it makes to its inputs).
//! Totals are kept per calling thread.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The symbol the profiled code calls.
pub(super) const SYMBOL: &str = "qatc_profile_mark";

#[derive(Default)]
struct State {
    totals: Vec<Duration>,
    current: Option<(usize, Instant)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Called by profiled code before node `node` (and with the node count after the last): adds
/// the time since the previous mark to the previous node.
pub(super) extern "C" fn mark(node: i64) {
    let now = Instant::now();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some((k, since)) = s.current.take() {
            if let Some(t) = s.totals.get_mut(k) {
                *t += now - since;
            }
        }
        let node = usize::try_from(node).unwrap_or(usize::MAX);
        s.current = (node < s.totals.len()).then_some((node, now));
    });
}

/// Starts counting on this thread for a graph of `nodes` nodes (totals back to zero).
pub fn start(nodes: usize) {
    STATE.with(|s| {
        *s.borrow_mut() = State {
            totals: vec![Duration::ZERO; nodes],
            current: None,
        }
    });
}

/// This thread's totals per node since [`start`].
pub fn totals() -> Vec<Duration> {
    STATE.with(|s| s.borrow().totals.clone())
}
