//! The label values the gRPC metrics take from the wire: the status code's name
//! ([`code_label`]) and the `/package.Service/Method` paths the server serves (anything else is
//! counted as `unknown`, so a caller cannot make up label values).

use prost::Message;

/// The `code` label: the status code's name as the Go gRPC libraries (and their Prometheus
/// interceptors, `grpc_code`) spell it.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The `/package.Service/Method` paths of the services in an encoded file descriptor set.
pub(super) fn method_paths(encoded: &[u8]) -> Vec<String> {
    let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
        tracing::warn!("metrics: a compiled-in file descriptor set does not decode");
        return Vec::new();
    };
    let mut paths = Vec::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                let service_name = if package.is_empty() {
                    service.name().to_owned()
                } else {
                    format!("{package}.{}", service.name())
                };
                paths.push(format!("/{service_name}/{}", method.name()));
            }
        }
    }
    paths
}
