//! clusterprune-core: the pure-Rust engine behind clusterprune.
//!
//! * [`kmeans`]: deterministic k-means on unit matrices (Ward or k-means++ initialisation,
//!   Lloyd refinement with a GEMM distance step), byte-identical whatever the thread count.
//! * [`palette`]: palettization (1-D weighted k-means of scalar weights per row, group or tensor).
//! * [`select`]: structured magnitude selection (keep the K best-scoring units).
//! * [`allocate`]: per-module cluster counts (uniform and variance-mixed plans).
//! * [`dtype`]: f16 / bf16 <-> f32 conversion for checkpoint storage.
//! * [`bitpack`]: table indices packed into a bit stream and back.
//! * [`segment`]: sums of matrix rows per label.
//! * [`sums`]: float64 sums of f32 values in NumPy's order.
//!
//! Nothing here knows about Python, files or model families: inputs are plain slices.

pub mod allocate;
pub mod bitpack;
pub mod dtype;
pub mod error;
pub mod kmeans;
mod linalg;
pub mod palette;
mod rng;
pub mod segment;
pub mod select;
pub mod sums;

pub use error::CoreError;
