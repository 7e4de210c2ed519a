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
