//! Batched quantized matmul: `y = x · wᵀ` with `w` in a GGUF block format and `x` quantized once
//! per call to 8-bit blocks, integer dot products, and each decoded weight block applied to many
//! rows of the batch.
//!
//! # Layout
//! At load, a GGUF matrix `[out, k]` is repacked ([`PackedMatrix::pack`]) into *tiles* of 16
//! output columns. Within a tile, each 32-element block of `k` is 8 *lines* of 64 bytes; line `g`
//! holds, for each of the 16 columns, 4 consecutive weights `k = 32·b + 4·g .. +4` as unsigned
//! bytes `u`. One AVX-512 VNNI `vpdpbusd` of a line with 4 broadcast activation bytes yields 16
//! column sums at once, with no horizontal reduction. Every GGUF format maps to `u` exactly, with
//! per-block parameters ([`Kind`]):
//! - Q8_0, Q5_0, Q4_0: `w = d · (u − bias)`, `d` the format's own f16 (bias 128, 16, 8);
//! - Q4_K: `w = s · u − m` per 32-element sub-block (`s = d·sc`, `m = dmin·min`, f32);
//! - Q6_K: `w = s_h · (u − 32)` per 16-element half (`s_h = d·sc_h`, f32).
//!
//! The weights stay 8-bit in memory: 1.06 bytes per weight for the symmetric formats (as in GGUF),
//! 1.25 for the k-quants (twice their GGUF size; they hold a fifth of the default model).
//!
//! # Activations
//! Each row of `x` is quantized like llama.cpp's `Q8_0`: per 32 elements `d = max|x| / 127` (kept
//! as f16), `q = round(x / d)`, plus the integer sum of each 16 `q`s for the bias and min terms.
//!
//! # Numerics and batch invariance
//! For output `(row, col)`, block by block in order of `k`: an exact integer dot `i` (bias and
//! min corrected with the activation sums), turned into a float `f` by the block's parameters,
//! then `acc = fma(d_x, f, acc)`. That sequence of float operations is the same in every code path
//! ([`Isa`]) and for every tiling, so a row's result depends neither on the batch around it nor on
//! the instruction set: the SIMD paths are checked bit for bit against the portable one.

#![allow(unsafe_code)]

mod pack;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

/// Output columns per tile.
pub const LANES: usize = 16;
/// Elements of `k` per block.
pub const QK: usize = 32;
/// 4-byte groups per block: lines per (tile, block).
const GROUPS: usize = QK / 4;
/// Rows computed together by a kernel call (register tile).
const MR: usize = 8;
/// Rows per pass over a tile range, so the quantized activations stay in cache.
const ROW_CHUNK: usize = 64;

/// 64 bytes, cache-line aligned: 16 columns × 4 weights.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Line(pub(crate) [u8; 64]);

/// How a block's unsigned bytes become weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `w = d · (u − bias)`, one f16 `d` per block and column (Q8_0: 128, Q5_0: 16, Q4_0: 8).
    Sym { bias: u8 },
    /// `w = s · u − m`, f32 `s` and `m` per block and column (Q4_K).
    Asym,
    /// `w = s_h · (u − 32)` with an f32 `s_h` for each 16-element half of a block (Q6_K).
    Halves,
}

impl Kind {
    /// Parameter bytes per (tile, block).
    fn param_bytes(self) -> usize {
        match self {
            Kind::Sym { .. } => LANES * 2,
            Kind::Asym | Kind::Halves => LANES * 4 * 2,
        }
    }

    fn code(self) -> u8 {
        match self {
            Kind::Sym { bias: 128 } => K_SYM128,
            Kind::Sym { .. } => K_SYM,
            Kind::Asym => K_ASYM,
            Kind::Halves => K_HALVES,
        }
    }

    fn bias(self) -> i32 {
        match self {
            Kind::Sym { bias } => bias as i32,
            Kind::Asym => 0,
            Kind::Halves => 32,
        }
    }
}

// Kernel specialisations (const generic codes).
const K_SYM: u8 = 0;
const K_SYM128: u8 = 1;
const K_ASYM: u8 = 2;
const K_HALVES: u8 = 3;

/// A weight matrix `[out, k]` repacked for the kernels (see the module docs).
pub struct PackedMatrix {
    out: usize,
    k: usize,
    tiles: usize,
    /// Blocks of `QK` along `k`.
    nb: usize,
    kind: Kind,
    dtype: GgmlDType,
    /// `[tile][block][group]`.
    lines: Vec<Line>,
    /// `[tile][block]` of `kind.param_bytes()`: `Sym`: 16 × f16 `d`; `Asym`: 16 × f32 `s`, then
    /// 16 × f32 `m`; `Halves`: 16 × f32 `s_0`, then 16 × f32 `s_1`. Little-endian.
    params: Vec<u8>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("out", &self.out)
            .field("k", &self.k)
            .field("dtype", &self.dtype)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl PackedMatrix {
    /// Repacks a GGUF matrix. Supported: Q8_0, Q5_0, Q4_0, Q4_K, Q6_K.
    pub fn pack(t: &QTensor) -> Result<Self, String> {
        let (out, k) = t.shape().dims2().map_err(|e| e.to_string())?;
        let dtype = t.dtype();
        let kind = pack::kind_of(dtype).ok_or_else(|| {
            format!("{dtype:?} weights are not supported by the CPU matmul (Q8_0, Q5_0, Q4_0, Q4_K, Q6_K are)")
        })?;
        if k == 0 || !k.is_multiple_of(dtype.block_size()) || out == 0 {
            return Err(format!("[{out}, {k}] is not a whole number of {dtype:?} blocks"));
        }
        let data = t.data().map_err(|e| e.to_string())?;
        let row_bytes = k / dtype.block_size() * dtype.type_size();
        if data.len() != out * row_bytes {
            return Err(format!("{} bytes of {dtype:?} data for [{out}, {k}]", data.len()));
        }
        let (tiles, nb) = (out.div_ceil(LANES), k / QK);
        let pb = kind.param_bytes();
        let mut lines = vec![Line([0; 64]); tiles * nb * GROUPS];
        let mut params = vec![0u8; tiles * nb * pb];
        lines.par_chunks_mut(nb * GROUPS).zip(params.par_chunks_mut(nb * pb)).enumerate().for_each(
            |(tile, (tl, tp))| {
                let mut u = vec![0u8; k];
                let mut p0 = vec![0f32; nb];
                let mut p1 = vec![0f32; nb];
                let mut d16 = vec![0u16; nb];
                for lane in 0..LANES {
                    let col = tile * LANES + lane;
                    if col >= out {
                        // Padding column: bias bytes and zero scales, so it computes 0.
                        u.fill(kind.bias() as u8);
                        p0.fill(0.0);
                        p1.fill(0.0);
                        d16.fill(0);
                    } else {
                        pack::decode_row(
                            dtype,
                            &data[col * row_bytes..(col + 1) * row_bytes],
                            &mut u,
                            &mut p0,
                            &mut p1,
                            &mut d16,
                        );
                    }
                    for b in 0..nb {
                        for g in 0..GROUPS {
                            tl[b * GROUPS + g].0[lane * 4..lane * 4 + 4].copy_from_slice(&u[b * QK + g * 4..][..4]);
                        }
                        let bp = &mut tp[b * pb..(b + 1) * pb];
                        match kind {
                            Kind::Sym { .. } => bp[lane * 2..lane * 2 + 2].copy_from_slice(&d16[b].to_le_bytes()),
                            Kind::Asym | Kind::Halves => {
                                bp[lane * 4..lane * 4 + 4].copy_from_slice(&p0[b].to_le_bytes());
                                bp[64 + lane * 4..64 + lane * 4 + 4].copy_from_slice(&p1[b].to_le_bytes());
                            }
                        }
                    }
                }
            },
        );
        Ok(PackedMatrix { out, k, tiles, nb, kind, dtype, lines, params })
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Bytes held (weights and parameters).
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64 + self.params.len()
    }

    fn param_f32(&self, tile: usize, b: usize, second: bool, lane: usize) -> f32 {
        let at = (tile * self.nb + b) * self.kind.param_bytes() + if second { 64 } else { 0 } + lane * 4;
        f32::from_le_bytes(self.params[at..at + 4].try_into().expect("4 bytes. This is a bug."))
    }

    fn param_d16(&self, tile: usize, b: usize, lane: usize) -> f32 {
        let at = (tile * self.nb + b) * self.kind.param_bytes() + lane * 2;
        f16::from_bits(u16::from_le_bytes([self.params[at], self.params[at + 1]])).to_f32()
    }

    fn byte(&self, col: usize, i: usize) -> u8 {
        let (tile, lane) = (col / LANES, col % LANES);
        let (b, g, j) = (i / QK, (i % QK) / 4, i % 4);
        self.lines[(tile * self.nb + b) * GROUPS + g].0[lane * 4 + j]
    }

    /// Dequantizes row `col` (one output column's weights) into `y`: exactly the values candle's
    /// and ggml's dequantization give. Used for embedding lookups.
    pub fn dequantize_row(&self, col: usize, y: &mut [f32]) {
        assert!(col < self.out && y.len() == self.k, "dequantize_row out of range. This is a bug.");
        let (tile, lane) = (col / LANES, col % LANES);
        for (i, y) in y.iter_mut().enumerate() {
            let b = i / QK;
            let u = self.byte(col, i) as i32;
            *y = match self.kind {
                Kind::Sym { bias } => self.param_d16(tile, b, lane) * (u - bias as i32) as f32,
                Kind::Asym => self.param_f32(tile, b, false, lane) * u as f32 - self.param_f32(tile, b, true, lane),
                Kind::Halves => self.param_f32(tile, b, (i % QK) >= 16, lane) * (u - 32) as f32,
            };
        }
    }
}

/// Rows of activations quantized to 8-bit blocks (see the module docs). Reused across calls.
#[derive(Clone, Debug, Default)]
pub struct QAct {
    rows: usize,
    k: usize,
    qs: Vec<i8>,
    /// `[row][block]` scale.
    d: Vec<f32>,
    /// `[row][half-block]`: sum of each 16 quantized values.
    sums: Vec<i32>,
}

impl QAct {
    /// Quantizes `x` (`rows × k`, row-major) into this buffer.
    pub fn quantize(&mut self, x: &[f32], rows: usize, k: usize) {
        assert!(
            k.is_multiple_of(QK) && x.len() == rows * k,
            "quantize: {} values as {rows}x{k}. This is a bug.",
            x.len()
        );
        let nb = k / QK;
        self.rows = rows;
        self.k = k;
        self.qs.resize(rows * k, 0);
        self.d.resize(rows * nb, 0.0);
        self.sums.resize(rows * nb * 2, 0);
        let blocks = x
            .chunks_exact(QK)
            .zip(self.qs.chunks_exact_mut(QK))
            .zip(self.d.iter_mut())
            .zip(self.sums.chunks_exact_mut(2));
        for (((xb, qb), d), sums) in blocks {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            // Ties to even, as ggml's x86 quantization (`_mm256_round_ps`) does; vectorizes.
            for (q, &v) in qb.iter_mut().zip(xb) {
                *q = (v * inv).round() as i8;
            }
            *d = f16::from_f32(scale).to_f32();
            sums[0] = qb[..16].iter().map(|&q| q as i32).sum();
            sums[1] = qb[16..].iter().map(|&q| q as i32).sum();
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Instruction set of the matmul kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Scalar Rust: the reference, and the path on CPUs without the features below.
    Portable,
    /// AVX2 + FMA + F16C (`vpmaddubsw`).
    Avx2,
    /// AVX-512 F/BW/VL with VNNI (`vpdpbusd`).
    Avx512Vnni,
}

impl Isa {
    /// The best path this CPU supports, detected once. `HEARTH_CPU_ISA=portable|avx2|avx512`
    /// forces a lower one (for comparisons); a path the CPU lacks is never chosen.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = *Isa::available().last().expect("portable is always available. This is a bug.");
            match std::env::var("HEARTH_CPU_ISA").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") if Isa::available().contains(&Isa::Avx2) => Isa::Avx2,
                _ => best,
            }
        })
    }

    /// Every path this CPU can run, worst first (detected once).
    pub fn available() -> &'static [Isa] {
        static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
        AVAILABLE.get_or_init(Isa::probe)
    }

    fn probe() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                v.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx512Vnni);
            }
        }
        v
    }
}

/// One kernel call: rows `r0 .. r0 + mr` of `a` against tile `tile`, written to `out`.
#[derive(Clone, Copy)]
pub(crate) struct TileJob<'a> {
    pub w: &'a PackedMatrix,
    pub a: &'a QAct,
    pub tile: usize,
    pub r0: usize,
    /// Output `[rows, w.out]` row-major.
    pub out: *mut f32,
}

impl TileJob<'_> {
    /// Valid columns in this tile.
    fn width(&self) -> usize {
        (self.w.out - self.tile * LANES).min(LANES)
    }
}

struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of (row, column) elements of the output buffer, which
// outlives the parallel section.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

/// `out = a · wᵀ` (`[rows, w.out]`), on the given instruction set, spread over rayon's pool.
pub fn matmul(w: &PackedMatrix, a: &QAct, out: &mut [f32], isa: Isa) {
    assert_eq!(a.k, w.k, "matmul: activation k {} vs weight k {}. This is a bug.", a.k, w.k);
    assert_eq!(out.len(), a.rows * w.out, "matmul: output buffer size. This is a bug.");
    assert!(Isa::available().contains(&isa), "matmul: {isa:?} is not available on this CPU. This is a bug.");
    let ptr = OutPtr(out.as_mut_ptr());
    let run = |tiles: std::ops::Range<usize>| {
        let out = &ptr;
        for rc in (0..a.rows).step_by(ROW_CHUNK) {
            let rend = (rc + ROW_CHUNK).min(a.rows);
            for tile in tiles.clone() {
                let mut r0 = rc;
                while r0 < rend {
                    let mr = (rend - r0).min(MR);
                    let job = TileJob { w, a, tile, r0, out: out.0 };
                    run_tile(&job, mr, isa);
                    r0 += mr;
                }
            }
        }
    };
    // Split the columns over the pool when there is enough work to pay for it.
    let work = w.tiles * w.nb * a.rows;
    let threads = rayon::current_num_threads();
    if threads <= 1 || work < 2048 || w.tiles < 2 {
        run(0..w.tiles);
    } else {
        let chunks = (threads * 8).min(w.tiles);
        let per = w.tiles.div_ceil(chunks);
        (0..w.tiles.div_ceil(per)).into_par_iter().for_each(|c| run(c * per..((c + 1) * per).min(w.tiles)));
    }
}

fn run_tile(job: &TileJob<'_>, mr: usize, isa: Isa) {
    match isa {
        Isa::Portable => portable_tile(job, mr),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::avx2_tile(job, mr),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::avx512_tile(job, mr),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("x86 paths are never available here. This is a bug."),
    }
}

/// The reference: the same integer and float operations as the SIMD paths, one column at a time.
fn portable_tile(job: &TileJob<'_>, mr: usize) {
    let (w, a) = (job.w, job.a);
    let (nb, k) = (w.nb, w.k);
    let bias = w.kind.bias();
    for r in job.r0..job.r0 + mr {
        for lane in 0..job.width() {
            let col = job.tile * LANES + lane;
            let mut acc = 0f32;
            for b in 0..nb {
                let aq = &a.qs[r * k + b * QK..][..QK];
                let mut half = [0i32; 2];
                for (i, &q) in aq.iter().enumerate() {
                    half[i / 16] += w.byte(col, b * QK + i) as i32 * q as i32;
                }
                let s = [a.sums[(r * nb + b) * 2], a.sums[(r * nb + b) * 2 + 1]];
                let f = match w.kind {
                    Kind::Sym { .. } => {
                        let i = half[0] + half[1] - bias * (s[0] + s[1]);
                        w.param_d16(job.tile, b, lane) * i as f32
                    }
                    Kind::Asym => {
                        let t = w.param_f32(job.tile, b, false, lane) * (half[0] + half[1]) as f32;
                        (-w.param_f32(job.tile, b, true, lane)).mul_add((s[0] + s[1]) as f32, t)
                    }
                    Kind::Halves => {
                        let i0 = half[0] - 32 * s[0];
                        let i1 = half[1] - 32 * s[1];
                        let t = w.param_f32(job.tile, b, false, lane) * i0 as f32;
                        w.param_f32(job.tile, b, true, lane).mul_add(i1 as f32, t)
                    }
                };
                acc = a.d[r * nb + b].mul_add(f, acc);
            }
            // SAFETY: (r, col) is inside the `[rows, out]` buffer and written by this job only.
            unsafe { *job.out.add(r * w.out + col) = acc };
        }
    }
}

#[cfg(test)]
mod tests;
