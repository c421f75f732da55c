//! Data sets: MNIST IDX (plain or gzip), CIFAR-10 binary batches, and IDX files named one by one.
//!
//! Every malformed file is an error naming the file and what is wrong (bad magic, truncated,
//! label count differs from image count); nothing here panics on bad input, and no allocation is
//! sized by a header field before the file is known to hold that much data.

use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::syntax::ast::DataSource;

/// Images as bytes (N x C x H x W, row-major) with one label each.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    /// One image's shape `[C, H, W]`.
    pub shape: [usize; 3],
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_size(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_size();
        &self.images[i * n..(i + 1) * n]
    }

    /// Fills `x` with the images `indices`, normalized, and `labels` with their labels.
    pub fn batch(
        &self,
        indices: &[usize],
        norm: &Normalization,
        x: &mut Vec<f32>,
        labels: &mut Vec<u8>,
    ) {
        let plane = self.shape[1] * self.shape[2];
        let size = self.image_size();
        // Every value is overwritten: resizing only zeroes when the batch grows.
        x.resize(indices.len() * size, 0.0);
        // Images in parallel: a serial pass here would leave the other threads idle long
        // enough to sleep, and waking them costs more than the pass.
        x.par_chunks_mut(size.max(1))
            .zip(indices)
            .for_each(|(out, &i)| norm.apply_into(self.image(i), (self.shape[0], plane), out));
        labels.clear();
        labels.extend(indices.iter().map(|&i| self.labels[i]));
    }

    /// Number of classes: one more than the largest label.
    pub fn classes(&self) -> usize {
        self.labels
            .iter()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1)
    }
}

/// A training split and a test split.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
    /// Set when the source had no test files and the last 10 % of training data was held out.
    pub held_out: bool,
    /// The validation set (`train { validation: F }`): the last fraction F of the training
    /// data, measured after every epoch instead of the test set.
    pub validation: Option<Dataset>,
}

impl Splits {
    /// Moves the last `fraction` of the training data (at least one sample, and never all of
    /// it) into [`Splits::validation`].
    pub fn hold_out_validation(&mut self, fraction: f64) {
        let n = self.train.len();
        let k = ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1));
        let size = self.train.image_size();
        let keep = n - k;
        self.validation = Some(Dataset {
            images: self.train.images.split_off(keep * size),
            labels: self.train.labels.split_off(keep),
            shape: self.train.shape,
        });
    }
}

/// Files up to this size are read whole; larger ones are refused (a sanity bound, not a format
/// limit: CIFAR-10's batches are 30 MB each).
const MAX_FILE_BYTES: u64 = 1 << 31;

/// Where a path from a spec may be, in the order [`locate`] tries them: beside the spec, then
/// in the working directory (one place for an absolute path).
fn candidates(path: &str, spec_dir: &Path) -> Vec<PathBuf> {
    let p = Path::new(path);
    if p.is_absolute() {
        return vec![p.to_path_buf()];
    }
    let beside_spec = spec_dir.join(p);
    let here = std::env::current_dir().unwrap_or_default();
    let cwd = here.join(p);
    if here.join(&beside_spec) == cwd {
        vec![beside_spec]
    } else {
        vec![beside_spec, cwd]
    }
}

/// A path from a spec where it is (the first of [`candidates`] for which `found` holds), or the
/// places tried, for an error message: `a, b or c`.
pub fn locate(path: &str, spec_dir: &Path, found: fn(&Path) -> bool) -> Result<PathBuf, String> {
    let places = candidates(path, spec_dir);
    match places.iter().find(|p| found(p)) {
        Some(p) => Ok(p.clone()),
        None => Err(tried(&places)),
    }
}

/// The places tried, for an error message: `a, b or c`.
fn tried(places: &[PathBuf]) -> String {
    let names: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Loads only the test data a spec names (evaluation needs no training files). A source
/// without a test set holds out its last tenth, as [`load`] does.
pub fn load_test(source: &DataSource, spec_dir: &Path) -> Result<Dataset, String> {
    match source {
        DataSource::Mnist { dir } => {
            let dirs = candidates(dir, spec_dir);
            let file = |stem: &str| find_mnist_file(&dirs, stem);
            load_idx_pair(
                &file("t10k-images-idx3-ubyte")?,
                &file("t10k-labels-idx1-ubyte")?,
            )
        }
        DataSource::Cifar10 { dir } => {
            let mut test = Dataset {
                images: Vec::new(),
                labels: Vec::new(),
                shape: [3, 32, 32],
            };
            load_cifar_batch(&cifar_dir(dir, spec_dir)?.join("test_batch.bin"), &mut test)?;
            Ok(test)
        }
        DataSource::Idx { .. } => load(source, spec_dir).map(|s| s.test),
    }
}

/// The CIFAR-10 folder a spec names, or an error listing the places tried.
fn cifar_dir(dir: &str, spec_dir: &Path) -> Result<PathBuf, String> {
    locate(dir, spec_dir, Path::is_dir).map_err(|places| {
        format!(
            "CIFAR-10 folder not found: tried {places}. qatc does not ship CIFAR-10; put its \
             binary batches (data_batch_1.bin .. data_batch_5.bin, test_batch.bin) there"
        )
    })
}

/// Loads the data a spec names.
pub fn load(source: &DataSource, spec_dir: &Path) -> Result<Splits, String> {
    match source {
        DataSource::Mnist { dir } => {
            let dirs = candidates(dir, spec_dir);
            let file = |stem: &str| find_mnist_file(&dirs, stem);
            Ok(Splits {
                train: load_idx_pair(
                    &file("train-images-idx3-ubyte")?,
                    &file("train-labels-idx1-ubyte")?,
                )?,
                test: load_idx_pair(
                    &file("t10k-images-idx3-ubyte")?,
                    &file("t10k-labels-idx1-ubyte")?,
                )?,
                held_out: false,
                validation: None,
            })
        }
        DataSource::Cifar10 { dir } => load_cifar10(&cifar_dir(dir, spec_dir)?),
        DataSource::Idx {
            images,
            labels,
            test_images,
            test_labels,
        } => {
            let file = |path: &str| {
                locate(path, spec_dir, Path::is_file)
                    .map_err(|places| format!("data file `{path}` not found: tried {places}"))
            };
            let train = load_idx_pair(&file(images)?, &file(labels)?)?;
            match (test_images, test_labels) {
                (Some(ti), Some(tl)) => Ok(Splits {
                    train,
                    test: load_idx_pair(&file(ti)?, &file(tl)?)?,
                    held_out: false,
                    validation: None,
                }),
                (None, None) => Ok(hold_out(train)),
                _ => Err("idx(...): give both test_images and test_labels, or neither".into()),
            }
        }
    }
}

fn hold_out(all: Dataset) -> Splits {
    let n_test = (all.len() / 10).max(1).min(all.len());
    let n_train = all.len() - n_test;
    let size = all.image_size();
    let test = Dataset {
        images: all.images[n_train * size..].to_vec(),
        labels: all.labels[n_train..].to_vec(),
        shape: all.shape,
    };
    let train = Dataset {
        images: all.images[..n_train * size].to_vec(),
        labels: all.labels[..n_train].to_vec(),
        shape: all.shape,
    };
    Splits {
        train,
        test,
        held_out: true,
        validation: None,
    }
}

/// `DIR/STEM` or `DIR/STEM.gz` in the first of `dirs` that has one; the error lists every path
/// tried.
fn find_mnist_file(dirs: &[PathBuf], stem: &str) -> Result<PathBuf, String> {
    let places: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| [d.join(stem), d.join(format!("{stem}.gz"))])
        .collect();
    match places.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(format!(
            "MNIST file `{stem}` missing: tried {} (a relative data path is looked up beside \
             the spec, then in the working directory)",
            tried(&places)
        )),
    }
}

/// Reads a file whole, un-gzipping it when its name ends in `.gz`.
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{}: {} bytes is too large for a data file",
            path.display(),
            meta.len()
        ));
    }
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(MAX_FILE_BYTES)
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: not a valid gzip file ({e})", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The dimensions of an IDX file of unsigned bytes, and its payload.
fn parse_idx<'a>(
    bytes: &'a [u8],
    path: &Path,
    want_dims: usize,
) -> Result<(Vec<usize>, &'a [u8]), String> {
    let name = path.display();
    if bytes.len() < 4 {
        return Err(format!(
            "{name}: truncated: {} bytes, too short for an IDX header",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(format!(
            "{name}: bad magic {:02x}{:02x}{:02x}{:02x}: not an IDX file of unsigned bytes (expected 0000080{want_dims})",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    let n_dims = bytes[3] as usize;
    if n_dims != want_dims {
        return Err(format!(
            "{name}: has {n_dims} dimensions, expected {want_dims}"
        ));
    }
    let header = 4 + 4 * n_dims;
    if bytes.len() < header {
        return Err(format!("{name}: truncated inside the header"));
    }
    let dims: Vec<usize> = (0..n_dims)
        .map(|d| {
            u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let payload = &bytes[header..];
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match expected {
        Some(n) if n == payload.len() => Ok((dims, payload)),
        Some(n) if n > payload.len() => Err(format!(
            "{name}: truncated: the header promises {n} bytes of data ({dims:?}), the file has {}",
            payload.len()
        )),
        Some(n) => Err(format!(
            "{name}: {} bytes of data after the {n} the header promises ({dims:?})",
            payload.len() - n
        )),
        None => Err(format!("{name}: header dimensions {dims:?} overflow")),
    }
}

/// Model inputs read from a file, for `qatc run`: a `.npy` array of f32 samples (`[N, ...shape]`
/// or `[N, product]`, C order, already normalized), or an IDX file of 8-bit images (`N x H x W`
/// or `N x C x H x W`, plain or gzip), normalized with `normalization`. Returns the values and
/// `N`. Every malformed file is an error naming the file and what is wrong.
pub fn read_inputs(
    path: &Path,
    shape: &[usize],
    normalization: Option<&Normalization>,
) -> Result<(Vec<f32>, usize), String> {
    let bytes = read_file(path)?;
    let name = path.display();
    let size: usize = shape.iter().product();
    if bytes.starts_with(b"\x93NUMPY") {
        let npy = npyz::NpyFile::new(bytes.as_slice())
            .map_err(|e| format!("{name}: not a valid .npy file ({e})"))?;
        let dtype = match npy.dtype() {
            npyz::DType::Plain(t) => t.to_string(),
            other => other.descr().to_string(),
        };
        if dtype != "<f4" {
            return Err(format!(
                "{name}: holds {dtype} values; `qatc run` reads float32 (`<f4`): save it with \
                 `np.save(path, x.astype(np.float32))`"
            ));
        }
        if npy.order() != npyz::Order::C {
            return Err(format!(
                "{name}: is in Fortran order; save it in C order (`np.ascontiguousarray`)"
            ));
        }
        let dims: Vec<u64> = npy.shape().to_vec();
        let per_sample = dims
            .get(1..)
            .and_then(|d| d.iter().try_fold(1u64, |a, &b| a.checked_mul(b)));
        let fits = match (dims.first(), per_sample) {
            (Some(&n), Some(k)) => {
                let trailing: Vec<u64> = dims[1..].to_vec();
                let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
                if n == 0 {
                    return Err(format!("{name}: holds no samples (shape {dims:?})"));
                }
                k == size as u64 && (trailing == want || trailing.len() == 1)
            }
            _ => false,
        };
        if !fits {
            return Err(format!(
                "{name}: has shape {dims:?}; the model takes [N, {}] (or [N, {size}])",
                dims_text(shape)
            ));
        }
        let n = dims[0] as usize;
        // The header's count must be what the file holds before anything is read.
        let payload = n
            .checked_mul(size)
            .and_then(|v| v.checked_mul(4))
            .filter(|&b| b <= bytes.len())
            .ok_or_else(|| {
                format!("{name}: truncated: shape {dims:?} needs more data than the file holds")
            })?;
        let values: Vec<f32> = npy
            .into_vec()
            .map_err(|e| format!("{name}: truncated or corrupt data ({e})"))?;
        if values.len() * 4 != payload {
            return Err(format!(
                "{name}: holds {} values, its shape {dims:?} says {}",
                values.len(),
                n * size
            ));
        }
        return Ok((values, n));
    }
    let Some(&dims_count) = bytes.get(3).filter(|&&d| d == 3 || d == 4) else {
        return Err(format!(
            "{name}: neither a .npy file (magic \\x93NUMPY) nor an IDX file of images \
             (magic 00000803 or 00000804)"
        ));
    };
    let (dims, pixels) = parse_idx(&bytes, path, dims_count as usize)?;
    let image: Vec<usize> = if dims.len() == 3 {
        vec![1, dims[1], dims[2]]
    } else {
        dims[1..].to_vec()
    };
    let flat = [image.iter().product::<usize>()];
    if image != shape && flat != shape {
        return Err(format!(
            "{name}: holds {}x{}x{} images; the model takes [{}]",
            image[0],
            image[1],
            image[2],
            dims_text(shape)
        ));
    }
    let Some(normalization) = normalization else {
        return Err(format!(
            "{name}: images need the model's input normalization, and this model carries none"
        ));
    };
    let mut values = Vec::with_capacity(pixels.len());
    normalization.apply(pixels, (image[0], image[1] * image[2]), &mut values);
    Ok((values, dims[0]))
}

fn dims_text(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    dims.join(", ")
}

/// An f32 array in `.npy` form (C order).
pub fn npy_f32(values: &[f32], shape: &[usize]) -> Result<Vec<u8>, String> {
    use npyz::WriterBuilder;
    let mut out = Vec::new();
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&dims)
        .writer(&mut out)
        .begin_nd()
        .map_err(|e| e.to_string())?;
    writer
        .extend(values.iter().copied())
        .map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// How 8-bit images become model inputs: `(p / 255 - mean[c]) / std[c]` for channel `c`, as
/// torchvision's ToTensor + Normalize (a single value serves every channel).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// Appends images of 8-bit pixels (`channels` planes of `plane` pixels each, images one
    /// after another) to `out`, normalized.
    pub fn apply(&self, pixels: &[u8], dims: (usize, usize), out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + pixels.len(), 0.0);
        self.apply_into(pixels, dims, &mut out[start..]);
    }

    /// [`Normalization::apply`] into a slice as long as `pixels`.
    pub fn apply_into(&self, pixels: &[u8], (channels, plane): (usize, usize), out: &mut [f32]) {
        let channels = channels.max(1);
        let planes = pixels
            .chunks(plane.max(1))
            .zip(out.chunks_mut(plane.max(1)));
        for (k, (pixels, out)) in planes.enumerate() {
            let c = k % channels;
            let (mean, std) = (
                self.mean[c.min(self.mean.len().saturating_sub(1))],
                self.std[c.min(self.std.len().saturating_sub(1))],
            );
            let (scale, shift) = (1.0 / (255.0 * std), -mean / std);
            for (v, &p) in out.iter_mut().zip(pixels) {
                *v = p as f32 * scale + shift;
            }
        }
    }
}

/// Images evaluated at once by [`accuracy`].
pub const EVAL_BATCH: usize = 500;

/// Top-1 accuracy in percent of a classifier over `data`: `run(input, batch)` gives `batch` rows
/// of `classes` logits for the normalized images. The one evaluation loop of the float, the
/// fake-quant, the interpreted and the compiled model.
pub fn accuracy<E>(
    data: &Dataset,
    norm: &Normalization,
    classes: usize,
    mut run: impl FnMut(&[f32], usize) -> Result<Vec<f32>, E>,
) -> Result<f32, E> {
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    let mut correct = 0;
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(EVAL_BATCH) {
        data.batch(chunk, norm, &mut x, &mut labels);
        let logits = run(&x, chunk.len())?;
        correct += logits
            .chunks_exact(classes.max(1))
            .zip(&labels)
            .filter(|(row, &label)| argmax(row) == label as usize)
            .count();
    }
    Ok(100.0 * correct as f32 / data.len().max(1) as f32)
}

/// The index of the largest value (the first of equals); 0 for an empty row.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// An IDX image file (N x H x W) and its label file (N).
pub fn load_idx_pair(images_path: &Path, labels_path: &Path) -> Result<Dataset, String> {
    let image_bytes = read_file(images_path)?;
    let label_bytes = read_file(labels_path)?;
    let (dims, images) = parse_idx(&image_bytes, images_path, 3)?;
    let (ldims, labels) = parse_idx(&label_bytes, labels_path, 1)?;
    if dims[0] != ldims[0] {
        return Err(format!(
            "{} has {} labels but {} has {} images",
            labels_path.display(),
            ldims[0],
            images_path.display(),
            dims[0]
        ));
    }
    if dims[1] == 0 || dims[2] == 0 {
        return Err(format!(
            "{}: empty images ({}x{})",
            images_path.display(),
            dims[1],
            dims[2]
        ));
    }
    check_labels(labels, labels_path)?;
    Ok(Dataset {
        images: images.to_vec(),
        labels: labels.to_vec(),
        shape: [1, dims[1], dims[2]],
    })
}

fn check_labels(labels: &[u8], path: &Path) -> Result<(), String> {
    if labels.is_empty() {
        return Err(format!("{}: no labels", path.display()));
    }
    Ok(())
}

/// CIFAR-10 binary: records of 1 label byte + 3072 pixel bytes (3 x 32 x 32).
pub const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

fn load_cifar10(dir: &Path) -> Result<Splits, String> {
    let train_files: Vec<PathBuf> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .collect();
    let test_file = dir.join("test_batch.bin");
    let mut train = Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        shape: [3, 32, 32],
    };
    for f in &train_files {
        load_cifar_batch(f, &mut train)?;
    }
    let mut test = Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        shape: [3, 32, 32],
    };
    load_cifar_batch(&test_file, &mut test)?;
    Ok(Splits {
        train,
        test,
        held_out: false,
        validation: None,
    })
}

/// Appends one CIFAR-10 batch file to `into`.
pub fn load_cifar_batch(path: &Path, into: &mut Dataset) -> Result<(), String> {
    let bytes = read_file(path)?;
    if bytes.is_empty() || bytes.len() % CIFAR_RECORD != 0 {
        return Err(format!(
            "{}: {} bytes is not a whole number of CIFAR-10 records ({CIFAR_RECORD} bytes each){}",
            path.display(),
            bytes.len(),
            if bytes.len() > CIFAR_RECORD {
                ": truncated?"
            } else {
                ""
            }
        ));
    }
    for (r, record) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        if record[0] > 9 {
            return Err(format!(
                "{}: record {r} has label {}, CIFAR-10 labels are 0..9",
                path.display(),
                record[0]
            ));
        }
        into.labels.push(record[0]);
        into.images.extend_from_slice(&record[1..]);
    }
    Ok(())
}
