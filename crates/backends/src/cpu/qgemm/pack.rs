//! Decoding of GGUF block formats into unsigned bytes plus per-32-element parameters.
//! Byte layouts follow ggml's `block_q8_0`, `block_q5_0`, `block_q4_0`, `block_q4_K`, `block_q6_K`.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::{Kind, QK};

pub(super) fn kind_of(dtype: GgmlDType) -> Option<Kind> {
    Some(match dtype {
        GgmlDType::Q8_0 => Kind::Sym { bias: 128 },
        GgmlDType::Q5_0 => Kind::Sym { bias: 16 },
        GgmlDType::Q4_0 => Kind::Sym { bias: 8 },
        GgmlDType::Q4K => Kind::Asym,
        GgmlDType::Q6K => Kind::Halves,
        _ => return None,
    })
}

fn f16_at(b: &[u8], at: usize) -> f16 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// 6-bit scale and min of sub-block `j` of a Q4_K block (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Decodes one row (`k` weights) into `u` and, per 32-element block, `d16` (Sym) or `p0`/`p1`.
pub(super) fn decode_row(dtype: GgmlDType, row: &[u8], u: &mut [u8], p0: &mut [f32], p1: &mut [f32], d16: &mut [u16]) {
    let bs = dtype.type_size();
    match dtype {
        GgmlDType::Q8_0 => {
            for (b, blk) in row.chunks_exact(bs).enumerate() {
                d16[b] = f16_at(blk, 0).to_bits();
                for (j, &q) in blk[2..34].iter().enumerate() {
                    u[b * QK + j] = (q as i8 as i16 + 128) as u8;
                }
            }
        }
        GgmlDType::Q5_0 => {
            for (b, blk) in row.chunks_exact(bs).enumerate() {
                d16[b] = f16_at(blk, 0).to_bits();
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                for j in 0..16 {
                    let q = blk[6 + j];
                    u[b * QK + j] = (q & 0xF) | ((((qh >> j) & 1) as u8) << 4);
                    u[b * QK + j + 16] = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                }
            }
        }
        GgmlDType::Q4_0 => {
            for (b, blk) in row.chunks_exact(bs).enumerate() {
                d16[b] = f16_at(blk, 0).to_bits();
                for j in 0..16 {
                    let q = blk[2 + j];
                    u[b * QK + j] = q & 0xF;
                    u[b * QK + j + 16] = q >> 4;
                }
            }
        }
        GgmlDType::Q4K => {
            for (sb, blk) in row.chunks_exact(bs).enumerate() {
                let d = f16_at(blk, 0).to_f32();
                let dmin = f16_at(blk, 2).to_f32();
                let scales = &blk[4..16];
                let qs = &blk[16..144];
                for c in 0..4 {
                    for h in 0..2 {
                        let j = 2 * c + h;
                        let (sc, m) = scale_min_k4(j, scales);
                        let b = sb * 8 + j;
                        p0[b] = d * sc as f32;
                        p1[b] = dmin * m as f32;
                        for l in 0..32 {
                            let q = qs[32 * c + l];
                            u[b * QK + l] = if h == 0 { q & 0xF } else { q >> 4 };
                        }
                    }
                }
            }
        }
        GgmlDType::Q6K => {
            for (sb, blk) in row.chunks_exact(bs).enumerate() {
                let (ql, qh, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
                let d = f16_at(blk, 208).to_f32();
                let base = sb * 256;
                for n in 0..2 {
                    let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
                    for l in 0..32 {
                        let e = base + 128 * n + l;
                        u[e] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                        u[e + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                        u[e + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        u[e + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
                // Scale h of the super-block covers elements 16h .. 16h + 16.
                for (h, &sc) in sc.iter().enumerate() {
                    let s = d * (sc as i8) as f32;
                    let b = sb * 8 + h / 2;
                    if h % 2 == 0 {
                        p0[b] = s;
                    } else {
                        p1[b] = s;
                    }
                }
            }
        }
        _ => unreachable!("kind_of admits only the formats above. This is a bug."),
    }
}
