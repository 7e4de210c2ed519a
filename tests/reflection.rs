//! gRPC reflection, which grpcurl (the README's walk-through) relies on: the server lists its
//! services and serves the descriptor of the lifecycle contract.

#[macro_use]
#[allow(unused_macros)]
mod common;

use common::{Backend, TestServer};

/// A client of one version of the reflection service (`v1`, or `v1alpha`, which grpcurl builds
/// that speak only v1alpha use): `ask` sends one request, `services` lists the services.
macro_rules! reflection_client {
    ($version:ident) => {
        mod $version {
            use tokio_stream::StreamExt;
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            pub use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            pub use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

            use super::TestServer;

            pub async fn ask(server: &TestServer, request: MessageRequest) -> MessageResponse {
                let outbound = tokio_stream::iter([ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request),
                }]);
                let mut answers = ServerReflectionClient::new(server.new_channel().await)
                    .server_reflection_info(outbound)
                    .await
                    .expect(concat!(stringify!($version), " reflection is served"))
                    .into_inner();
                let answer = answers
                    .next()
                    .await
                    .expect("one answer")
                    .expect("answer ok");
                answer.message_response.expect("a message")
            }

            pub async fn services(server: &TestServer) -> Vec<String> {
                let request = MessageRequest::ListServices(String::new());
                let MessageResponse::ListServicesResponse(list) = ask(server, request).await else {
                    panic!("expected a service list");
                };
                list.service.into_iter().map(|s| s.name).collect()
            }
        }
    };
}

reflection_client!(v1);
reflection_client!(v1alpha);

#[tokio::test]
async fn reflection_lists_the_services_and_serves_the_lifecycle_contract() {
    use v1::{MessageRequest, MessageResponse};
    let server = TestServer::start(Backend::Sqlite)
        .await
        .expect("SQLite always runs");
    let names = v1::services(&server).await;
    for expected in ["ocs.lifecycle.v1.AccountLifecycle", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let answer = v1::ask(
        &server,
        MessageRequest::FileContainingSymbol("ocs.lifecycle.v1.AccountLifecycle".into()),
    )
    .await;
    let MessageResponse::FileDescriptorResponse(files) = answer else {
        panic!("expected file descriptors, got {answer:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn reflection_v1alpha_is_served_too_and_error_details_resolve() {
    let server = TestServer::start(Backend::Sqlite)
        .await
        .expect("SQLite always runs");
    let names = v1alpha::services(&server).await;
    assert!(
        names
            .iter()
            .any(|n| n == "ocs.lifecycle.v1.AccountLifecycle"),
        "{names:?}"
    );
    // The ErrorInfo every error carries is resolvable, on both versions.
    let answer = v1alpha::ask(
        &server,
        v1alpha::MessageRequest::FileContainingSymbol("google.rpc.ErrorInfo".into()),
    )
    .await;
    let v1alpha::MessageResponse::FileDescriptorResponse(files) = answer else {
        panic!("google.rpc.ErrorInfo does not resolve on v1alpha: {answer:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    let answer = v1::ask(
        &server,
        v1::MessageRequest::FileContainingSymbol("google.rpc.ErrorInfo".into()),
    )
    .await;
    assert!(
        matches!(answer, v1::MessageResponse::FileDescriptorResponse(_)),
        "google.rpc.ErrorInfo does not resolve on v1: {answer:?}"
    );
    server.stop().await;
}
