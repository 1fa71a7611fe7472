//! hearth-proto: the generated code of hearth's native gRPC API (`proto/hearth/v1/*.proto`), the
//! encoded file descriptor set for server reflection, and the codec every generated service uses.
//!
//! Nothing else lives here: validation and conversion to engine types are the server's.

pub mod codec;

/// Package `hearth.v1`: the `Generation` and `Models` services and their messages.
pub mod v1 {
    tonic::include_proto!("hearth.v1");
}

/// The encoded `FileDescriptorSet` of `hearth.v1`, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hearth_v1_descriptor");
