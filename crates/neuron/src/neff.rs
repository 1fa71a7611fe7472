//! The 1024-byte NEFF header, parsed on the CPU before `nrt_load`.
//!
//! A NEFF (Neuron Executable File Format) is a fixed 1024-byte header followed by a tarball of
//! the compiled graph. The header layout below is the documented C struct
//! (`work-with-neff-files.rst`, see `shared/reference/neuron.md` §1.4), little endian:
//!
//! ```text
//! u64 pkg_version, header_size, data_size, neff_version_major, neff_version_minor;  // @0..40
//! u8  neff_build_version[128];   // @40
//! u32 num_tpb;                   // @168
//! u8  hash[32];                  // @172
//! u8  uuid[16];                  // @204
//! char name[256];                // @220
//! u32 requested_tpb_count;       // @476
//! u8  tpb_per_node[64];          // @480
//! u64 feature_bits;              // @544 (already 8-aligned: C inserts no padding)
//! u32 lnc_size;                  // @552
//! u8  pad[468];                  // @556..1024
//! ```
//!
//! The offsets follow C layout rules; a test rebuilds the struct as `#[repr(C)]` and checks them.
//! We use the header to log what is loaded and to refuse a NEFF compiled for another logical
//! NeuronCore size before the runtime sees it. Written from the documented format; checked only
//! against synthetic fixtures and mock-nrt here.

use std::path::Path;

/// Size of the NEFF header.
pub const NEFF_HEADER_SIZE: usize = 1024;

/// Byte offsets of the header fields (C layout, checked by a test).
pub mod off {
    pub const PKG_VERSION: usize = 0;
    pub const HEADER_SIZE: usize = 8;
    pub const DATA_SIZE: usize = 16;
    pub const VERSION_MAJOR: usize = 24;
    pub const VERSION_MINOR: usize = 32;
    pub const BUILD_VERSION: usize = 40;
    pub const NUM_TPB: usize = 168;
    pub const HASH: usize = 172;
    pub const UUID: usize = 204;
    pub const NAME: usize = 220;
    pub const REQUESTED_TPB_COUNT: usize = 476;
    pub const TPB_PER_NODE: usize = 480;
    pub const FEATURE_BITS: usize = 544;
    pub const LNC_SIZE: usize = 552;
    pub const PAD: usize = 556;
}

/// The fields of a NEFF header the server uses or logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeffHeader {
    pub pkg_version: u64,
    pub header_size: u64,
    /// Bytes of the packaged graph after the header.
    pub data_size: u64,
    /// `(neff_version_major, neff_version_minor)`.
    pub version: (u64, u64),
    /// The compiler build that produced the file (NUL-terminated text in the header).
    pub build_version: String,
    pub num_tpb: u32,
    pub hash: [u8; 32],
    pub uuid: [u8; 16],
    pub name: String,
    pub requested_tpb_count: u32,
    pub tpb_per_node: [u8; 64],
    pub feature_bits: u64,
    /// Logical NeuronCore size the graph was compiled for (`--lnc`); 0 when not recorded.
    pub lnc_size: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NeffError {
    #[error("file of {len} bytes is shorter than the {NEFF_HEADER_SIZE}-byte NEFF header")]
    Short { len: usize },
    #[error("header_size is {found}, expected {NEFF_HEADER_SIZE}")]
    HeaderSize { found: u64 },
    #[error("header ({header_size} bytes) + data ({data_size} bytes) go beyond the file of {len} bytes")]
    Truncated { header_size: u64, data_size: u64, len: usize },
    #[error("NEFF '{name}' was compiled for logical NeuronCore size {found}, the manifest says {expected}")]
    Lnc { name: String, found: u32, expected: u32 },
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8-byte slice. This is a bug."))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4-byte slice. This is a bug."))
}

/// Text up to the first NUL (lossy UTF-8).
fn c_text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl NeffHeader {
    /// Parses the header of a whole NEFF file's bytes and checks that the sizes it declares fit
    /// the file.
    pub fn parse(bytes: &[u8]) -> Result<Self, NeffError> {
        if bytes.len() < NEFF_HEADER_SIZE {
            return Err(NeffError::Short { len: bytes.len() });
        }
        let b = &bytes[..NEFF_HEADER_SIZE];
        let header_size = u64_at(b, off::HEADER_SIZE);
        if header_size != NEFF_HEADER_SIZE as u64 {
            return Err(NeffError::HeaderSize { found: header_size });
        }
        let data_size = u64_at(b, off::DATA_SIZE);
        if header_size.checked_add(data_size).is_none_or(|end| end > bytes.len() as u64) {
            return Err(NeffError::Truncated { header_size, data_size, len: bytes.len() });
        }
        Ok(NeffHeader {
            pkg_version: u64_at(b, off::PKG_VERSION),
            header_size,
            data_size,
            version: (u64_at(b, off::VERSION_MAJOR), u64_at(b, off::VERSION_MINOR)),
            build_version: c_text(&b[off::BUILD_VERSION..off::NUM_TPB]),
            num_tpb: u32_at(b, off::NUM_TPB),
            hash: b[off::HASH..off::UUID].try_into().expect("32-byte slice. This is a bug."),
            uuid: b[off::UUID..off::NAME].try_into().expect("16-byte slice. This is a bug."),
            name: c_text(&b[off::NAME..off::REQUESTED_TPB_COUNT]),
            requested_tpb_count: u32_at(b, off::REQUESTED_TPB_COUNT),
            tpb_per_node: b[off::TPB_PER_NODE..off::FEATURE_BITS].try_into().expect("64-byte slice. This is a bug."),
            feature_bits: u64_at(b, off::FEATURE_BITS),
            lnc_size: u32_at(b, off::LNC_SIZE),
        })
    }

    /// Reads and parses a NEFF file's header; returns the header and the whole file.
    pub fn read(path: &Path) -> std::io::Result<(Self, Vec<u8>)> {
        let bytes = std::fs::read(path)?;
        let h = Self::parse(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok((h, bytes))
    }

    /// Refuses a NEFF compiled for another logical NeuronCore size than `expected` (the runtime
    /// needs `NEURON_LOGICAL_NC_CONFIG` to equal the compiler's `--lnc`). A header that records
    /// no size (0) is accepted: older compilers did not write it.
    pub fn check_lnc(&self, expected: u32) -> Result<(), NeffError> {
        if self.lnc_size == 0 || self.lnc_size == expected {
            Ok(())
        } else {
            Err(NeffError::Lnc { name: self.name.clone(), found: self.lnc_size, expected })
        }
    }
}

/// Builds a header with the given fields (for tests and for the synthetic NEFFs of the mock-nrt
/// tests; never a real compiled artifact).
#[doc(hidden)]
pub fn synthetic_header(name: &str, data_size: u64, lnc_size: u32) -> [u8; NEFF_HEADER_SIZE] {
    let mut h = [0u8; NEFF_HEADER_SIZE];
    h[off::PKG_VERSION..off::PKG_VERSION + 8].copy_from_slice(&1u64.to_le_bytes());
    h[off::HEADER_SIZE..off::HEADER_SIZE + 8].copy_from_slice(&(NEFF_HEADER_SIZE as u64).to_le_bytes());
    h[off::DATA_SIZE..off::DATA_SIZE + 8].copy_from_slice(&data_size.to_le_bytes());
    h[off::VERSION_MAJOR..off::VERSION_MAJOR + 8].copy_from_slice(&2u64.to_le_bytes());
    h[off::VERSION_MINOR..off::VERSION_MINOR + 8].copy_from_slice(&0u64.to_le_bytes());
    let build = b"synthetic-0.0";
    h[off::BUILD_VERSION..off::BUILD_VERSION + build.len()].copy_from_slice(build);
    h[off::NUM_TPB..off::NUM_TPB + 4].copy_from_slice(&1u32.to_le_bytes());
    let n = name.len().min(255);
    h[off::NAME..off::NAME + n].copy_from_slice(&name.as_bytes()[..n]);
    h[off::REQUESTED_TPB_COUNT..off::REQUESTED_TPB_COUNT + 4].copy_from_slice(&1u32.to_le_bytes());
    h[off::LNC_SIZE..off::LNC_SIZE + 4].copy_from_slice(&lnc_size.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// The documented header as a C struct: the offsets above must be what C layout gives.
    #[repr(C)]
    #[allow(dead_code)]
    struct NeffHeaderC {
        pkg_version: u64,
        header_size: u64,
        data_size: u64,
        neff_version_major: u64,
        neff_version_minor: u64,
        neff_build_version: [u8; 128],
        num_tpb: u32,
        hash: [u8; 32],
        uuid: [u8; 16],
        name: [u8; 256],
        requested_tpb_count: u32,
        tpb_per_node: [u8; 64],
        feature_bits: u64,
        lnc_size: u32,
        pad: [u8; 468],
    }

    #[test]
    fn offsets_follow_c_layout() {
        assert_eq!(size_of::<NeffHeaderC>(), NEFF_HEADER_SIZE);
        assert_eq!(offset_of!(NeffHeaderC, header_size), off::HEADER_SIZE);
        assert_eq!(offset_of!(NeffHeaderC, data_size), off::DATA_SIZE);
        assert_eq!(offset_of!(NeffHeaderC, neff_version_major), off::VERSION_MAJOR);
        assert_eq!(offset_of!(NeffHeaderC, neff_version_minor), off::VERSION_MINOR);
        assert_eq!(offset_of!(NeffHeaderC, neff_build_version), off::BUILD_VERSION);
        assert_eq!(offset_of!(NeffHeaderC, num_tpb), off::NUM_TPB);
        assert_eq!(offset_of!(NeffHeaderC, hash), off::HASH);
        assert_eq!(offset_of!(NeffHeaderC, uuid), off::UUID);
        assert_eq!(offset_of!(NeffHeaderC, name), off::NAME);
        assert_eq!(offset_of!(NeffHeaderC, requested_tpb_count), off::REQUESTED_TPB_COUNT);
        assert_eq!(offset_of!(NeffHeaderC, tpb_per_node), off::TPB_PER_NODE);
        assert_eq!(offset_of!(NeffHeaderC, feature_bits), off::FEATURE_BITS);
        assert_eq!(offset_of!(NeffHeaderC, lnc_size), off::LNC_SIZE);
        assert_eq!(offset_of!(NeffHeaderC, pad), off::PAD);
    }

    /// A synthetic NEFF: a synthetic header plus `data` (not a compiled graph).
    fn synthetic_neff(name: &str, data: &[u8], lnc: u32) -> Vec<u8> {
        let mut f = synthetic_header(name, data.len() as u64, lnc).to_vec();
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn parses_a_synthetic_header() {
        let mut f = synthetic_neff("synthetic_prefill_8x1", b"synthetic body", 2);
        f[off::HASH] = 0xab;
        f[off::UUID + 15] = 0xcd;
        f[off::FEATURE_BITS..off::FEATURE_BITS + 8].copy_from_slice(&0x0102u64.to_le_bytes());
        let h = NeffHeader::parse(&f).unwrap();
        assert_eq!(h.name, "synthetic_prefill_8x1");
        assert_eq!(h.version, (2, 0));
        assert_eq!(h.build_version, "synthetic-0.0");
        assert_eq!((h.header_size, h.data_size), (1024, 14));
        assert_eq!((h.num_tpb, h.requested_tpb_count, h.lnc_size, h.pkg_version), (1, 1, 2, 1));
        assert_eq!((h.hash[0], h.uuid[15], h.feature_bits), (0xab, 0xcd, 0x0102));
        assert_eq!(h.check_lnc(2), Ok(()));
        assert!(matches!(h.check_lnc(1), Err(NeffError::Lnc { found: 2, expected: 1, .. })));
    }

    #[test]
    fn a_synthetic_header_without_lnc_is_accepted_for_any_lnc() {
        let h = NeffHeader::parse(&synthetic_neff("synthetic_old", b"", 0)).unwrap();
        assert_eq!(h.check_lnc(1), Ok(()));
        assert_eq!(h.check_lnc(2), Ok(()));
    }

    #[test]
    fn refuses_short_mismatched_and_truncated_synthetic_files() {
        assert_eq!(NeffHeader::parse(&[0u8; 100]), Err(NeffError::Short { len: 100 }));
        let mut f = synthetic_neff("synthetic", b"abc", 1);
        f[off::HEADER_SIZE..off::HEADER_SIZE + 8].copy_from_slice(&512u64.to_le_bytes());
        assert_eq!(NeffHeader::parse(&f), Err(NeffError::HeaderSize { found: 512 }));
        let mut f = synthetic_neff("synthetic", b"abc", 1);
        f.pop();
        assert_eq!(NeffHeader::parse(&f), Err(NeffError::Truncated { header_size: 1024, data_size: 3, len: 1026 }));
        let mut f = synthetic_neff("synthetic", b"", 1);
        f[off::DATA_SIZE..off::DATA_SIZE + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(NeffHeader::parse(&f), Err(NeffError::Truncated { .. })));
    }

    #[test]
    fn names_stop_at_the_first_nul_even_when_full() {
        let long = "n".repeat(300);
        let h = NeffHeader::parse(&synthetic_neff(&long, b"", 1)).unwrap();
        assert_eq!(h.name.len(), 255);
    }
}
