//! Element types of weights and GEMM inputs on the device, and the conversions into them.

use cudarc::cublas::sys::cudaDataType;
use cudarc::driver::CudaSlice;
use half::bf16;

/// Element type of weight matrices and GEMM inputs; GEMMs accumulate and write f32 whatever it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmDtype {
    /// bfloat16: the range of f32, 8 significant bits. The default (what bf16 checkpoints hold).
    #[default]
    Bf16,
    /// IEEE half: 11 significant bits, range ±65504 (GEMM inputs saturate there). Closer to
    /// dequantized GGUF weights than bf16.
    F16,
    /// f32 weights and inputs (twice the bytes of the halves): a precise reference, or for small models.
    F32,
}

impl GemmDtype {
    pub(super) fn cuda_type(self) -> cudaDataType {
        match self {
            GemmDtype::Bf16 => cudaDataType::CUDA_R_16BF,
            GemmDtype::F16 => cudaDataType::CUDA_R_16F,
            GemmDtype::F32 => cudaDataType::CUDA_R_32F,
        }
    }

    pub fn bytes(self) -> usize {
        if self == GemmDtype::F32 { 4 } else { 2 }
    }
}

impl std::str::FromStr for GemmDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bf16" => Ok(GemmDtype::Bf16),
            "f16" => Ok(GemmDtype::F16),
            "f32" => Ok(GemmDtype::F32),
            other => Err(format!("unknown GEMM dtype `{other}` (bf16, f16, f32)")),
        }
    }
}

pub(super) enum WeightBuf {
    /// bf16 or f16 bit patterns.
    Half(CudaSlice<u16>),
    F32(CudaSlice<f32>),
}

/// Converts f32 values to bf16 bit patterns (round to nearest even).
pub fn to_bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
}

/// Converts f32 values to f16 bit patterns (round to nearest even).
pub fn to_f16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect()
}
