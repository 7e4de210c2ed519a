//! gRPC reflection, which grpcurl (the README's walk-through) relies on: the server lists its
//! services and serves the descriptor of the lifecycle contract.

#[macro_use]
#[allow(unused_macros)]
mod common;

use common::{Backend, TestServer};
use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

async fn ask(server: &TestServer, request: MessageRequest) -> MessageResponse {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let outbound = tokio_stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    }]);
    let mut answers = client
        .server_reflection_info(outbound)
        .await
        .expect("reflection")
        .into_inner();
    let answer: ServerReflectionResponse = answers
        .next()
        .await
        .expect("one answer")
        .expect("answer ok");
    answer.message_response.expect("a message")
}

#[tokio::test]
async fn reflection_lists_the_services_and_serves_the_lifecycle_contract() {
    let server = TestServer::start(Backend::Sqlite)
        .await
        .expect("SQLite always runs");
    let MessageResponse::ListServicesResponse(list) =
        ask(&server, MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["ocs.lifecycle.v1.AccountLifecycle", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let answer = ask(
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

/// The v1alpha reflection service answers like v1 (grpcurl builds that speak only v1alpha).
async fn ask_v1alpha(
    server: &TestServer,
    request: tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest,
) -> tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let outbound = tokio_stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    }]);
    let mut answers = client
        .server_reflection_info(outbound)
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let answer = answers
        .next()
        .await
        .expect("one answer")
        .expect("answer ok");
    answer.message_response.expect("a message")
}

#[tokio::test]
async fn reflection_v1alpha_is_served_too_and_error_details_resolve() {
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaAnswer;
    let server = TestServer::start(Backend::Sqlite)
        .await
        .expect("SQLite always runs");
    let AlphaAnswer::ListServicesResponse(list) =
        ask_v1alpha(&server, Alpha::ListServices(String::new())).await
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names
            .iter()
            .any(|n| n == "ocs.lifecycle.v1.AccountLifecycle"),
        "{names:?}"
    );
    // The ErrorInfo every error carries is resolvable, on both versions.
    let answer = ask_v1alpha(
        &server,
        Alpha::FileContainingSymbol("google.rpc.ErrorInfo".into()),
    )
    .await;
    let AlphaAnswer::FileDescriptorResponse(files) = answer else {
        panic!("google.rpc.ErrorInfo does not resolve on v1alpha: {answer:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    let answer = ask(
        &server,
        MessageRequest::FileContainingSymbol("google.rpc.ErrorInfo".into()),
    )
    .await;
    assert!(
        matches!(answer, MessageResponse::FileDescriptorResponse(_)),
        "google.rpc.ErrorInfo does not resolve on v1: {answer:?}"
    );
    server.stop().await;
}
