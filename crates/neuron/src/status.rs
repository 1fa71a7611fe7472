//! libnrt status codes, classified once for the serving runtime.
//!
//! `NRT_STATUS` is a C enum; it crosses the FFI as a plain `c_int` and is never transmuted into a
//! Rust enum (an unknown code from a newer runtime must not be undefined behaviour). The codes and
//! their meaning come from the documented `nrt_status.h` (see `shared/reference/neuron.md` §1.1);
//! written from the documented API; checked only against mock-nrt here.
//!
//! Classification ([`ErrorClass`]) drives what the executor does: `Retryable` errors are retried a
//! bounded number of times, everything else fails the step or the load. The mapping to
//! [`hearth_core::BackendError`] is `Unavailable` for a replica that is busy, unhealthy or needs a
//! reset (the step fails; hearth does not yet take itself out of service, so the operator drains
//! the replica), `Internal` otherwise (a bug or a bad artifact).

use hearth_core::BackendError;

pub const NRT_SUCCESS: i32 = 0;
pub const NRT_FAILURE: i32 = 1;
pub const NRT_INVALID: i32 = 2;
pub const NRT_INVALID_HANDLE: i32 = 3;
pub const NRT_RESOURCE: i32 = 4;
pub const NRT_TIMEOUT: i32 = 5;
pub const NRT_HW_ERROR: i32 = 6;
pub const NRT_QUEUE_FULL: i32 = 7;
pub const NRT_LOAD_NOT_ENOUGH_NC: i32 = 9;
pub const NRT_UNSUPPORTED_NEFF_VERSION: i32 = 10;
pub const NRT_FAIL_HOST_MEM_ALLOC: i32 = 11;
pub const NRT_UNINITIALIZED: i32 = 13;
pub const NRT_CLOSED: i32 = 14;
pub const NRT_QUEUE_EMPTY: i32 = 15;
pub const NRT_EXEC_UNIT_UNRECOVERABLE: i32 = 101;
pub const NRT_EXEC_BAD_INPUT: i32 = 1002;
pub const NRT_EXEC_COMPLETED_WITH_NUM_ERR: i32 = 1003;
pub const NRT_EXEC_COMPLETED_WITH_ERR: i32 = 1004;
pub const NRT_EXEC_NC_BUSY: i32 = 1005;
pub const NRT_EXEC_OOB: i32 = 1006;
pub const NRT_COLL_PENDING: i32 = 1100;
pub const NRT_EXEC_HW_ERR_COLLECTIVES: i32 = 1200;
pub const NRT_EXEC_HW_ERR_HBM_UE: i32 = 1201;
pub const NRT_EXEC_HW_ERR_NC_UE: i32 = 1202;
pub const NRT_EXEC_HW_ERR_DMA_ABORT: i32 = 1203;
pub const NRT_EXEC_SW_NQ_OVERFLOW: i32 = 1204;
pub const NRT_EXEC_HW_ERR_REPAIRABLE_HBM_UE: i32 = 1205;
pub const NRT_NETWORK_PROXY_FAILURE: i32 = 1206;

/// What the serving runtime does about a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Capacity or contention (`RESOURCE`, `QUEUE_FULL`, `EXEC_NC_BUSY`): worth a bounded retry.
    Retryable,
    /// The replica is unhealthy and should be drained by the operator (`TIMEOUT`, `HW_ERROR`, the 12xx hardware codes).
    Unhealthy,
    /// The core or process needs a reset (`EXEC_UNIT_UNRECOVERABLE`).
    NeedsReset,
    /// The caller passed something the runtime refuses (`INVALID`, `INVALID_HANDLE`,
    /// `EXEC_BAD_INPUT`, `UNSUPPORTED_NEFF_VERSION`): a bug or a bad artifact.
    Invalid,
    /// Anything else, unknown codes included.
    Other,
}

/// The documented name of a status code (`"UNKNOWN"` for codes this crate does not know).
pub fn status_name(code: i32) -> &'static str {
    match code {
        NRT_SUCCESS => "NRT_SUCCESS",
        NRT_FAILURE => "NRT_FAILURE",
        NRT_INVALID => "NRT_INVALID",
        NRT_INVALID_HANDLE => "NRT_INVALID_HANDLE",
        NRT_RESOURCE => "NRT_RESOURCE",
        NRT_TIMEOUT => "NRT_TIMEOUT",
        NRT_HW_ERROR => "NRT_HW_ERROR",
        NRT_QUEUE_FULL => "NRT_QUEUE_FULL",
        NRT_LOAD_NOT_ENOUGH_NC => "NRT_LOAD_NOT_ENOUGH_NC",
        NRT_UNSUPPORTED_NEFF_VERSION => "NRT_UNSUPPORTED_NEFF_VERSION",
        NRT_FAIL_HOST_MEM_ALLOC => "NRT_FAIL_HOST_MEM_ALLOC",
        NRT_UNINITIALIZED => "NRT_UNINITIALIZED",
        NRT_CLOSED => "NRT_CLOSED",
        NRT_QUEUE_EMPTY => "NRT_QUEUE_EMPTY",
        NRT_EXEC_UNIT_UNRECOVERABLE => "NRT_EXEC_UNIT_UNRECOVERABLE",
        NRT_EXEC_BAD_INPUT => "NRT_EXEC_BAD_INPUT",
        NRT_EXEC_COMPLETED_WITH_NUM_ERR => "NRT_EXEC_COMPLETED_WITH_NUM_ERR",
        NRT_EXEC_COMPLETED_WITH_ERR => "NRT_EXEC_COMPLETED_WITH_ERR",
        NRT_EXEC_NC_BUSY => "NRT_EXEC_NC_BUSY",
        NRT_EXEC_OOB => "NRT_EXEC_OOB",
        NRT_COLL_PENDING => "NRT_COLL_PENDING",
        NRT_EXEC_HW_ERR_COLLECTIVES => "NRT_EXEC_HW_ERR_COLLECTIVES",
        NRT_EXEC_HW_ERR_HBM_UE => "NRT_EXEC_HW_ERR_HBM_UE",
        NRT_EXEC_HW_ERR_NC_UE => "NRT_EXEC_HW_ERR_NC_UE",
        NRT_EXEC_HW_ERR_DMA_ABORT => "NRT_EXEC_HW_ERR_DMA_ABORT",
        NRT_EXEC_SW_NQ_OVERFLOW => "NRT_EXEC_SW_NQ_OVERFLOW",
        NRT_EXEC_HW_ERR_REPAIRABLE_HBM_UE => "NRT_EXEC_HW_ERR_REPAIRABLE_HBM_UE",
        NRT_NETWORK_PROXY_FAILURE => "NRT_NETWORK_PROXY_FAILURE",
        _ => "UNKNOWN",
    }
}

/// The class of a (non-success) status code.
pub fn classify(code: i32) -> ErrorClass {
    match code {
        NRT_RESOURCE | NRT_QUEUE_FULL | NRT_EXEC_NC_BUSY => ErrorClass::Retryable,
        NRT_TIMEOUT | NRT_HW_ERROR | 1200..=1299 => ErrorClass::Unhealthy,
        NRT_EXEC_UNIT_UNRECOVERABLE => ErrorClass::NeedsReset,
        NRT_INVALID | NRT_INVALID_HANDLE | NRT_EXEC_BAD_INPUT | NRT_UNSUPPORTED_NEFF_VERSION => ErrorClass::Invalid,
        _ => ErrorClass::Other,
    }
}

/// A libnrt call that returned something other than `NRT_SUCCESS`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed with status {code} ({name}, {class:?})")]
pub struct NrtError {
    pub code: i32,
    pub name: &'static str,
    /// The libnrt function that failed (`"nrt_execute"`).
    pub call: &'static str,
    pub class: ErrorClass,
}

impl NrtError {
    pub fn new(call: &'static str, code: i32) -> Self {
        NrtError { code, name: status_name(code), call, class: classify(code) }
    }
}

/// `Ok` for `NRT_SUCCESS`, the classified error otherwise.
pub fn check(call: &'static str, status: i32) -> Result<(), NrtError> {
    if status == NRT_SUCCESS { Ok(()) } else { Err(NrtError::new(call, status)) }
}

impl From<NrtError> for BackendError {
    /// `Unavailable` when the replica should be drained (unhealthy, needs a reset, or still busy
    /// after the executor's retries), `Internal` otherwise. The message names the call, the code
    /// and its name.
    fn from(e: NrtError) -> Self {
        match e.class {
            ErrorClass::Retryable | ErrorClass::Unhealthy | ErrorClass::NeedsReset => {
                BackendError::Unavailable(e.to_string())
            }
            ErrorClass::Invalid | ErrorClass::Other => BackendError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classification_table_matches_the_documented_codes() {
        let table = [
            (4, ErrorClass::Retryable),
            (7, ErrorClass::Retryable),
            (1005, ErrorClass::Retryable),
            (5, ErrorClass::Unhealthy),
            (6, ErrorClass::Unhealthy),
            (1200, ErrorClass::Unhealthy),
            (1201, ErrorClass::Unhealthy),
            (1206, ErrorClass::Unhealthy),
            (101, ErrorClass::NeedsReset),
            (2, ErrorClass::Invalid),
            (3, ErrorClass::Invalid),
            (1002, ErrorClass::Invalid),
            (10, ErrorClass::Invalid),
            (1, ErrorClass::Other),
            (13, ErrorClass::Other),
            (1003, ErrorClass::Other),
            (424242, ErrorClass::Other),
            (-1, ErrorClass::Other),
        ];
        for (code, class) in table {
            assert_eq!(classify(code), class, "code {code}");
        }
    }

    #[test]
    fn check_passes_success_and_names_the_failure() {
        assert_eq!(check("nrt_init", 0), Ok(()));
        let e = check("nrt_execute", 1005).unwrap_err();
        assert_eq!((e.code, e.name, e.call, e.class), (1005, "NRT_EXEC_NC_BUSY", "nrt_execute", ErrorClass::Retryable));
        assert_eq!(status_name(99), "UNKNOWN");
    }

    #[test]
    fn backend_errors_name_the_call_and_the_code() {
        let unavailable = [4, 7, 1005, 5, 6, 1203, 101];
        for code in unavailable {
            match BackendError::from(NrtError::new("nrt_execute", code)) {
                BackendError::Unavailable(m) => {
                    assert!(m.contains("nrt_execute") && m.contains(&code.to_string()) && m.contains(status_name(code)))
                }
                other => panic!("code {code}: {other:?}"),
            }
        }
        for code in [1, 2, 3, 10, 1002, 1003, 77] {
            match BackendError::from(NrtError::new("nrt_load", code)) {
                BackendError::Internal(m) => assert!(m.contains("nrt_load") && m.contains(status_name(code)), "{m}"),
                other => panic!("code {code}: {other:?}"),
            }
        }
    }
}
