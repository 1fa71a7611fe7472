//! Hardware check, never run here: needs a Neuron device (`/dev/neuron0`), libnrt, and an
//! operator-built manifest named by `HEARTH_NEURON_MANIFEST`. Run it on a Neuron SDK host with
//! `cargo test -p hearth-neuron --features neuron-hw -- --ignored`. Optional:
//! `HEARTH_NEURON_LIBRARY` (a libnrt path) and `HEARTH_NEURON_VISIBLE_CORES` (`"0"`, `"0-1"`).
//! It loads every bucket and runs warmup; it says why when it skips.
#![cfg(feature = "neuron-hw")]

use hearth_core::Backend;
use hearth_neuron::{NeuronBackend, NeuronOptions};

#[test]
#[ignore = "needs a Neuron device, libnrt and HEARTH_NEURON_MANIFEST"]
fn loads_an_operator_manifest_and_warms_up_on_hardware() {
    if !std::path::Path::new("/dev/neuron0").exists() {
        eprintln!("skipped: /dev/neuron0 does not exist (no Neuron device on this host)");
        return;
    }
    let Ok(manifest) = std::env::var("HEARTH_NEURON_MANIFEST") else {
        eprintln!("skipped: HEARTH_NEURON_MANIFEST is not set (point it at an operator-built manifest.json)");
        return;
    };
    let mut opts = NeuronOptions::new(manifest);
    opts.library = std::env::var_os("HEARTH_NEURON_LIBRARY").map(Into::into);
    opts.visible_cores = std::env::var("HEARTH_NEURON_VISIBLE_CORES").ok();
    let mut backend = NeuronBackend::load(&opts).expect("load the manifest's NEFFs");
    let report = backend.warmup().expect("warm up every bucket");
    eprintln!("warmup ran {} buckets in {:.3} s", report.steps, report.seconds);
    assert_eq!(report.steps, backend.manifest().buckets.len());
}
