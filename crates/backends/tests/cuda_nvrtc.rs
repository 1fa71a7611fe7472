//! Every kernel in `kernels/` compiles with NVRTC to PTX for sm_80 and sm_90. Needs libnvrtc only,
//! no GPU: `scripts/test.sh` installs the nvidia-cuda-nvrtc wheel and sets `HEARTH_REQUIRE_NVRTC=1`,
//! which turns a missing library into a failure instead of a skip.

use hearth_backends::cuda::kernels::{SOURCES, compile};

fn nvrtc_present() -> bool {
    let found = hearth_backends::cuda::libraries().iter().any(|l| l.name.starts_with("libnvrtc") && l.present);
    if !found {
        assert!(
            std::env::var_os("HEARTH_REQUIRE_NVRTC").is_none(),
            "HEARTH_REQUIRE_NVRTC is set but libnvrtc is not on the loader path (LD_LIBRARY_PATH)"
        );
        eprintln!(
            "skipping: libnvrtc not found (install the nvidia-cuda-nvrtc wheel and add its lib folder to LD_LIBRARY_PATH)"
        );
    }
    found
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if !nvrtc_present() {
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for (file, src, entries) in SOURCES {
            let ptx = compile(file, src, arch).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            assert!(text.contains(&format!(".target {arch}")), "{file}: PTX is not for {arch}");
            for e in *entries {
                assert!(
                    text.contains(&format!(".entry {e}(")),
                    "{file}: entry point {e} missing from the PTX for {arch}"
                );
            }
        }
    }
}

#[test]
fn a_broken_kernel_is_reported_with_its_file() {
    if !nvrtc_present() {
        return;
    }
    let err = compile("broken.cu", "extern \"C\" __global__ void f(float* x) { x[0] = undefined_name; }", "sm_90")
        .expect_err("an undefined name must not compile");
    assert!(err.contains("kernels/broken.cu") && err.contains("sm_90"), "{err}");
}
