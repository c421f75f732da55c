//! Training allocates nothing per batch once its first batches have run: outputs, tapes,
//! gradients and the kernels' scratch space are all reused (`train::train_step`). The one
//! exception is x86 CPUs without FMA, whose matrix products go to `matrixmultiply`, which
//! allocates a packing buffer at each call: there every allocation must be one of those.
//! A counting allocator sees every allocation of every thread, so this file holds one test:
//! tests run in parallel threads, and another test's allocations would be counted too.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use qatc::train::engine::Mode;
use qatc::train::{self, kernels, optim, rng::Rng, StepBuffers};

/// The system allocator, counting allocations and their bytes.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn count(bytes: usize) {
    ALLOCATIONS.fetch_add(1, Relaxed);
    BYTES.fetch_add(bytes, Relaxed);
}

/// Batches run before counting: the first fills the network's buffers, and the threads' scratch
/// space settles over the next few.
const WARM_UP: usize = 4;
/// Batches counted.
const COUNTED: usize = 6;

/// What [`steady_state`] counts.
#[derive(Debug, PartialEq)]
struct Counts {
    allocations: usize,
    bytes: usize,
    /// Products handed to `matrixmultiply` (x86 CPUs without FMA).
    library_products: usize,
}

/// Allocations and bytes over [`COUNTED`] batches of training, in `mode`, after [`WARM_UP`]
/// batches, on two threads as `qatc train --threads 2` runs.
fn steady_state(spec: &str, mode: Mode) -> Counts {
    let path = common::root().join(spec);
    let text = std::fs::read_to_string(&path).unwrap();
    let (checked, _) = qatc::front_end(&path.display().to_string(), &text);
    let model = checked.expect("spec checks").model;
    let cfg = model.train.clone().unwrap();
    let data = train::load_data(&model, &cfg, &common::root().join("specs")).unwrap();
    let mut net = train::build_net(&model, cfg.seed).unwrap();
    let mut optimizer = optim::Optimizer::new(cfg.optimizer.clone());
    let mut rng = Rng::new(1);
    let mut reused = StepBuffers::default();
    let chunks: Vec<Vec<usize>> = (0..WARM_UP + COUNTED)
        .map(|b| (b * cfg.batch..(b + 1) * cfg.batch).collect())
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        let mut step = |chunk: &Vec<usize>| {
            let batch = (&data.train, chunk.as_slice(), &cfg.normalization);
            let optimizer = (&mut optimizer, &mut rng);
            train::train_step(&mut net, optimizer, batch, (mode, 0.01), &mut reused);
        };
        chunks[..WARM_UP].iter().for_each(&mut step);
        let products = kernels::library_products();
        let (allocations, bytes) = (ALLOCATIONS.load(Relaxed), BYTES.load(Relaxed));
        chunks[WARM_UP..].iter().for_each(&mut step);
        Counts {
            allocations: ALLOCATIONS.load(Relaxed) - allocations,
            bytes: BYTES.load(Relaxed) - bytes,
            library_products: kernels::library_products() - products,
        }
    })
}

#[test]
fn training_allocates_nothing_after_its_first_batches() {
    let qat = Mode {
        training: true,
        fake_quant: true,
        observe: true,
        bn_frozen: false,
        static_qparams: false,
    };
    let float = Mode {
        fake_quant: false,
        observe: false,
        ..qat
    };
    // lenet and the MLP as shipped; lenet_custom has BatchNorm folded into its convolutions,
    // per-channel weight observers and a layer left in float.
    for spec in [
        "specs/lenet_mnist.qspec",
        "specs/mnist_mlp.qspec",
        "specs/lenet_custom.qspec",
    ] {
        for (name, mode) in [("qat", qat), ("float", float)] {
            let counts = steady_state(spec, mode);
            // With FMA no product goes to the library, and nothing at all is allocated.
            let allowed = counts.library_products;
            assert_eq!(
                counts.allocations, allowed,
                "{spec} ({name}) over {COUNTED} batches: {counts:?}"
            );
            if allowed == 0 {
                assert_eq!(counts.bytes, 0, "{spec} ({name}): {counts:?}");
            }
        }
    }
}
