//! hearth-neuron: a static-shape [`hearth_core::Backend`] over AWS Neuron's runtime library
//! (`libnrt`), for models compiled ahead of time into one NEFF per bucket.
//!
//! Status: written from the documented libnrt API (see `shared/reference/neuron.md`); checked
//! only against mock-nrt here (a std-only stand-in library built by the integration tests). It
//! has never been run on Trainium or Inferentia hardware, so nothing here claims it works there.
//!
//! Layout:
//! * `sys`: hand-written bindings, loaded with `libloading` (the only FFI module);
//! * [`status`]: status codes and their classification;
//! * [`neff`]: the NEFF header, checked on the CPU before loading;
//! * [`manifest`]: the operator-written `manifest.json` naming the NEFFs and tensors by role;
//! * [`executor`]: [`NeuronBackend`], which pads each step through [`hearth_core::plan_shape`]
//!   and [`hearth_core::PaddedBatch`] and runs it on the matching graph.

pub mod executor;
pub mod manifest;
pub mod neff;
pub mod status;
mod sys;

mod error;

pub use error::NeuronError;
pub use executor::{NeuronBackend, NeuronOptions, parse_visible_cores};
pub use manifest::{Manifest, ManifestError};
pub use neff::{NeffError, NeffHeader};
pub use status::{ErrorClass, NrtError};
