//! gRPC reflection, which grpcurl (the README's walk-through) relies on: the server lists its
//! services and serves the descriptor of the lifecycle contract.

#[macro_use]
#[allow(unused_macros)]
mod common;

/// The reflection service of one version, `v1`, or `v1alpha` (which grpcurl builds that speak
/// only v1alpha use): a client (`ask` one request) and the test that each version lists the
/// services and resolves the lifecycle contract and the ErrorInfo every error carries.
macro_rules! reflection_suite {
    ($version:ident) => {
        mod $version {
            use common::{Backend, TestServer};
            use tokio_stream::StreamExt;
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

            use super::common;

            async fn ask(server: &TestServer, request: MessageRequest) -> MessageResponse {
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

            #[tokio::test]
            async fn reflection_lists_the_services_and_resolves_the_contract_and_error_details() {
                let server = TestServer::start(Backend::Sqlite)
                    .await
                    .expect("SQLite always runs");
                let request = MessageRequest::ListServices(String::new());
                let MessageResponse::ListServicesResponse(list) = ask(&server, request).await
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
                // The contract, and the ErrorInfo every error carries.
                for symbol in ["ocs.lifecycle.v1.AccountLifecycle", "google.rpc.ErrorInfo"] {
                    let request = MessageRequest::FileContainingSymbol(symbol.into());
                    let answer = ask(&server, request).await;
                    let MessageResponse::FileDescriptorResponse(files) = answer else {
                        panic!("{symbol} does not resolve: {answer:?}");
                    };
                    assert!(!files.file_descriptor_proto.is_empty(), "{symbol}");
                }
                server.stop().await;
            }
        }
    };
}

reflection_suite!(v1);
reflection_suite!(v1alpha);
