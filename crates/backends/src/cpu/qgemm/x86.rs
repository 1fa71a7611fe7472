//! x86-64 kernels: AVX-512 VNNI and AVX2. Each computes the same integers as the portable path
//! and then the same float operations (`mul`, `fma`) per output element, in the same order.

use std::arch::x86_64::*;

use super::{GROUPS, K_ASYM, K_HALVES, K_SYM, K_SYM128, LANES, MR, QK, TileJob};

/// How many blocks ahead the first row group prefetches weights.
const PREFETCH_BLOCKS: usize = 4;

/// Dispatches on the register-tile height and the weight kind.
pub(super) fn avx512_tile(job: &TileJob<'_>, mr: usize) {
    macro_rules! go {
        ($m:literal) => {
            match job.w.kind.code() {
                K_SYM => unsafe { avx512::<K_SYM, $m>(job) },
                K_SYM128 => unsafe { avx512::<K_SYM128, $m>(job) },
                K_ASYM => unsafe { avx512::<K_ASYM, $m>(job) },
                _ => unsafe { avx512::<K_HALVES, $m>(job) },
            }
        };
    }
    const _: () = assert!(MR == 8);
    // SAFETY (all arms): `Isa::available` checked the features before this path was chosen.
    match mr {
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        4 => go!(4),
        5 => go!(5),
        6 => go!(6),
        7 => go!(7),
        _ => go!(8),
    }
}

pub(super) fn avx2_tile(job: &TileJob<'_>, mr: usize) {
    // Sixteen ymm registers hold at most four rows' accumulators: taller tiles go in two calls.
    if mr > 4 {
        avx2_tile(job, 4);
        let rest = TileJob { r0: job.r0 + 4, ..*job };
        return avx2_tile(&rest, mr - 4);
    }
    macro_rules! go {
        ($m:literal) => {
            match job.w.kind.code() {
                K_SYM => unsafe { avx2::<K_SYM, $m>(job) },
                K_SYM128 => unsafe { avx2::<K_SYM128, $m>(job) },
                K_ASYM => unsafe { avx2::<K_ASYM, $m>(job) },
                _ => unsafe { avx2::<K_HALVES, $m>(job) },
            }
        };
    }
    // SAFETY (all arms): `Isa::available` checked the features before this path was chosen.
    match mr {
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        _ => go!(4),
    }
}

/// # Safety
/// The CPU has the enabled features; `job` addresses a valid tile and rows `r0 .. r0 + M`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
unsafe fn avx512<const KIND: u8, const M: usize>(job: &TileJob<'_>) {
    let (w, a) = (job.w, job.a);
    let (nb, k) = (w.nb, w.k);
    let pb = w.kind.param_bytes();
    let bias = w.kind.bias();
    let lines = w.lines[job.tile * nb * GROUPS..].as_ptr();
    let params = w.params[job.tile * nb * pb..].as_ptr();
    let mut acc = [_mm512_setzero_ps(); M];
    // The first row group of a tile streams its weights from memory: fetch a few blocks ahead
    // (the tiles are contiguous, so near the end this runs into the next tile's weights).
    let prefetch = job.r0.is_multiple_of(super::ROW_CHUNK);
    for b in 0..nb {
        if prefetch {
            let ahead = (lines as *const u8).wrapping_add((b + PREFETCH_BLOCKS) * GROUPS * 64);
            for g in 0..GROUPS {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(g * 64) as *const i8);
            }
        }
        // SAFETY: block b of this tile: 8 aligned lines, and its parameter bytes.
        let (wv, p0, p1) = unsafe {
            let l = lines.add(b * GROUPS) as *const __m512i;
            let wv: [__m512i; GROUPS] = std::array::from_fn(|g| _mm512_load_si512(l.add(g)));
            let pp = params.add(b * pb);
            if KIND == K_SYM || KIND == K_SYM128 {
                (wv, _mm512_cvtph_ps(_mm256_loadu_si256(pp as *const __m256i)), _mm512_setzero_ps())
            } else {
                (wv, _mm512_loadu_ps(pp as *const f32), _mm512_loadu_ps(pp.add(64) as *const f32))
            }
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let row = job.r0 + r;
            // SAFETY: the row's 32 quantized activations of block b.
            let ap = unsafe { a.qs.as_ptr().add(row * k + b * QK) } as *const i32;
            let x = |g: usize| _mm512_set1_epi32(unsafe { ap.add(g).read_unaligned() });
            let mut h0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[0], x(0));
            let mut h1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[4], x(4));
            h0 = _mm512_dpbusd_epi32(h0, wv[1], x(1));
            h1 = _mm512_dpbusd_epi32(h1, wv[5], x(5));
            h0 = _mm512_dpbusd_epi32(h0, wv[2], x(2));
            h1 = _mm512_dpbusd_epi32(h1, wv[6], x(6));
            h0 = _mm512_dpbusd_epi32(h0, wv[3], x(3));
            h1 = _mm512_dpbusd_epi32(h1, wv[7], x(7));
            let s0 = a.sums[(row * nb + b) * 2];
            let s1 = a.sums[(row * nb + b) * 2 + 1];
            let f = if KIND == K_SYM || KIND == K_SYM128 {
                let i = _mm512_sub_epi32(_mm512_add_epi32(h0, h1), _mm512_set1_epi32(bias * (s0 + s1)));
                _mm512_mul_ps(p0, _mm512_cvtepi32_ps(i))
            } else if KIND == K_ASYM {
                let t = _mm512_mul_ps(p0, _mm512_cvtepi32_ps(_mm512_add_epi32(h0, h1)));
                _mm512_fnmadd_ps(p1, _mm512_set1_ps((s0 + s1) as f32), t)
            } else {
                let i0 = _mm512_sub_epi32(h0, _mm512_set1_epi32(32 * s0));
                let i1 = _mm512_sub_epi32(h1, _mm512_set1_epi32(32 * s1));
                let t = _mm512_mul_ps(p0, _mm512_cvtepi32_ps(i0));
                _mm512_fmadd_ps(p1, _mm512_cvtepi32_ps(i1), t)
            };
            *acc = _mm512_fmadd_ps(_mm512_set1_ps(a.d[row * nb + b]), f, *acc);
        }
    }
    let mask: __mmask16 = if job.width() == LANES { !0 } else { (1u16 << job.width()) - 1 };
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: the valid columns of this tile in row r0 + r of the `[rows, out]` output.
        unsafe { _mm512_mask_storeu_ps(job.out.add((job.r0 + r) * w.out + job.tile * LANES), mask, *acc) };
    }
}

/// Integer dot of one 8-column half of a line (`w`: 8 columns × 4 bytes) with 4 broadcast
/// activation bytes, as 8 i32 column sums. Q8_0 (`KIND == K_SYM128`) is stored as `w + 128`,
/// which `vpmaddubsw` could saturate on, so it multiplies the signed weight through the
/// `abs`/`sign` identity instead and returns `Σ (u − 128)·x`, already bias-corrected.
#[inline]
#[target_feature(enable = "avx2")]
fn dot8<const KIND: u8>(w: __m256i, x: __m256i) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let p = if KIND == K_SYM128 {
        let ws = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
        _mm256_maddubs_epi16(_mm256_abs_epi8(ws), _mm256_sign_epi8(x, ws))
    } else {
        _mm256_maddubs_epi16(w, x)
    };
    _mm256_madd_epi16(p, ones)
}

/// # Safety
/// The CPU has the enabled features; `job` addresses a valid tile and rows `r0 .. r0 + M`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2<const KIND: u8, const M: usize>(job: &TileJob<'_>) {
    let (w, a) = (job.w, job.a);
    let (nb, k) = (w.nb, w.k);
    let pb = w.kind.param_bytes();
    // Q8_0's bias is removed inside `dot8`.
    let bias = if KIND == K_SYM128 { 0 } else { w.kind.bias() };
    let lines = w.lines[job.tile * nb * GROUPS..].as_ptr() as *const u8;
    let params = w.params[job.tile * nb * pb..].as_ptr();
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); M];
        for b in 0..nb {
            // SAFETY: block b of this tile, columns 8·half .. 8·half + 8.
            let (wv, p0, p1) = unsafe {
                let l = lines.add(b * GROUPS * 64 + half * 32);
                let wv: [__m256i; GROUPS] = std::array::from_fn(|g| _mm256_load_si256(l.add(g * 64) as *const __m256i));
                let pp = params.add(b * pb);
                if KIND == K_SYM || KIND == K_SYM128 {
                    (wv, _mm256_cvtph_ps(_mm_loadu_si128(pp.add(half * 16) as *const __m128i)), _mm256_setzero_ps())
                } else {
                    let p0 = _mm256_loadu_ps((pp as *const f32).add(half * 8));
                    (wv, p0, _mm256_loadu_ps((pp.add(64) as *const f32).add(half * 8)))
                }
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = job.r0 + r;
                // SAFETY: the row's 32 quantized activations of block b.
                let ap = unsafe { a.qs.as_ptr().add(row * k + b * QK) } as *const i32;
                let x = |g: usize| _mm256_set1_epi32(unsafe { ap.add(g).read_unaligned() });
                let (h0, h1) = {
                    let h0 = _mm256_add_epi32(
                        _mm256_add_epi32(dot8::<KIND>(wv[0], x(0)), dot8::<KIND>(wv[1], x(1))),
                        _mm256_add_epi32(dot8::<KIND>(wv[2], x(2)), dot8::<KIND>(wv[3], x(3))),
                    );
                    let h1 = _mm256_add_epi32(
                        _mm256_add_epi32(dot8::<KIND>(wv[4], x(4)), dot8::<KIND>(wv[5], x(5))),
                        _mm256_add_epi32(dot8::<KIND>(wv[6], x(6)), dot8::<KIND>(wv[7], x(7))),
                    );
                    (h0, h1)
                };
                let s0 = a.sums[(row * nb + b) * 2];
                let s1 = a.sums[(row * nb + b) * 2 + 1];
                let f = if KIND == K_SYM || KIND == K_SYM128 {
                    let i = _mm256_sub_epi32(_mm256_add_epi32(h0, h1), _mm256_set1_epi32(bias * (s0 + s1)));
                    _mm256_mul_ps(p0, _mm256_cvtepi32_ps(i))
                } else if KIND == K_ASYM {
                    let t = _mm256_mul_ps(p0, _mm256_cvtepi32_ps(_mm256_add_epi32(h0, h1)));
                    _mm256_fnmadd_ps(p1, _mm256_set1_ps((s0 + s1) as f32), t)
                } else {
                    let i0 = _mm256_sub_epi32(h0, _mm256_set1_epi32(32 * s0));
                    let i1 = _mm256_sub_epi32(h1, _mm256_set1_epi32(32 * s1));
                    let t = _mm256_mul_ps(p0, _mm256_cvtepi32_ps(i0));
                    _mm256_fmadd_ps(p1, _mm256_cvtepi32_ps(i1), t)
                };
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(a.d[row * nb + b]), f, *acc);
            }
        }
        let width = job.width().saturating_sub(half * 8).min(8);
        for (r, acc) in acc.iter().enumerate() {
            let mut v = [0f32; 8];
            // SAFETY: a local array of 8 floats.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), *acc) };
            for (c, &x) in v.iter().enumerate().take(width) {
                // SAFETY: a valid column of this tile in row r0 + r of the `[rows, out]` output.
                unsafe { *job.out.add((job.r0 + r) * w.out + job.tile * LANES + half * 8 + c) = x };
            }
        }
    }
}
