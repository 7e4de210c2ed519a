//! The client over TLS and mTLS, against a real server with the test PKI (SQLite;
//! certificates made by `scripts/make-test-certs.sh`): `--server https://…`, `--ca-cert`,
//! `--client-cert`, `--client-key` and their `OCS_*` variables (`common/cli.rs` runs the
//! binary).

#[macro_use]
#[allow(unused_macros)]
mod common;
#[path = "common/cli.rs"]
#[allow(dead_code)]
mod cli;
mod pki;

use std::sync::Arc;

use cli::*;
use common::{Backend, TestDb, TestServer};
use ocs_lifecycle::config::ClockMode;
use pki::Pki;

/// A manual-clock server with TLS (and mTLS: client certificates from the test CA).
async fn tls_server(pki: &Arc<Pki>, mtls: bool) -> TestServer {
    let mut config = common::test_config(ClockMode::Manual);
    config.tls.cert = Some(pki.path("server.pem"));
    config.tls.key = Some(pki.path("server.key"));
    if mtls {
        config.tls.client_ca = Some(pki.path("ca.pem"));
    }
    let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
    let client_pki = pki.clone();
    TestServer::start_with_channel(db, config, move |addr| client_pki.channel(addr, mtls)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reaches_a_tls_server_that_its_ca_cert_verifies() {
    let pki = Arc::new(Pki::make());
    let server = tls_server(&pki, false).await;
    let https = format!("https://localhost:{}", server.addr.port());
    let ca = pki.arg("ca.pem");

    let run = ocs_at(
        &https,
        &[
            "account",
            "provision",
            "8613800138000",
            "--sold",
            "--ca-cert",
            &ca,
        ],
    )
    .await
    .ok();
    assert!(run.stdout.contains("UNACTIVATED"), "{run:#?}");
    // The IP address is in the certificate too; the CA may come from OCS_CA_CERT.
    let by_ip = format!("https://127.0.0.1:{}", server.addr.port());
    let run = ocs_env(
        &by_ip,
        &[("OCS_CA_CERT", &ca)],
        &["account", "get", "8613800138000", "--output", "json"],
    )
    .await
    .ok();
    assert_eq!(run.json()["msisdn"], "8613800138000");
    // Without a scheme, a TLS option means https://.
    let bare = format!("localhost:{}", server.addr.port());
    ocs_at(
        &bare,
        &["account", "get", "8613800138000", "--ca-cert", &ca],
    )
    .await
    .ok();

    // The public roots do not know the test CA: one line, exit 1.
    let run = ocs_at(&https, &["account", "get", "8613800138000"]).await;
    assert_eq!(run.code, 1, "{run:#?}");
    let line = run.error_line();
    assert!(
        line.starts_with(&format!("error: cannot connect to the server at {https}"))
            && line.contains("certificate"),
        "{run:#?}"
    );
    // Plaintext against TLS fails too (it is not mistaken for a server that is down).
    let run = ocs_at(
        &format!("http://{}", server.addr),
        &["account", "get", "8613800138000"],
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    run.error_line();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reaches_an_mtls_server_with_its_client_certificate() {
    let pki = Arc::new(Pki::make());
    let server = tls_server(&pki, true).await;
    let https = format!("https://localhost:{}", server.addr.port());
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );

    let run = ocs_at(
        &https,
        &[
            "account",
            "provision",
            "8613800138001",
            "--sold",
            "--ca-cert",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
        ],
    )
    .await
    .ok();
    assert!(run.stdout.contains("UNACTIVATED"), "{run:#?}");
    let env = [
        ("OCS_CA_CERT", ca.as_str()),
        ("OCS_CLIENT_CERT", cert.as_str()),
        ("OCS_CLIENT_KEY", key.as_str()),
    ];
    let run = ocs_env(&https, &env, &["accounts", "list", "--output", "json"])
        .await
        .ok();
    assert_eq!(
        run.json()["accounts"][0]["msisdn"],
        "8613800138001",
        "{run:#?}"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = write_file(dir.path(), "cards.csv", "msisdn\n8613800138002\n");
    ocs_env(&https, &env, &["import", &file]).await.ok();

    // Without the client certificate the server refuses: one line, exit 1.
    let run = ocs_at(
        &https,
        &["account", "get", "8613800138001", "--ca-cert", &ca],
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    run.error_line();
    server.stop().await;
}

#[tokio::test]
async fn tls_options_are_checked_before_connecting() {
    let pki = Pki::make();
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );
    let missing = pki.arg("no-such.pem");
    // Nothing listens there: each refusal comes before any connection.
    let https = "https://127.0.0.1:1";
    let cases: [(&str, Vec<&str>, &str); 6] = [
        (
            https,
            vec!["--client-cert", &cert],
            "--client-cert needs --client-key",
        ),
        (
            https,
            vec!["--client-key", &key],
            "--client-key needs --client-cert",
        ),
        (https, vec!["--ca-cert", &missing], "--ca-cert: cannot read"),
        (https, vec!["--ca-cert", &key], "--ca-cert: "),
        (
            https,
            vec!["--client-cert", &cert, "--client-key", &cert],
            "--client-key: ",
        ),
        (
            "http://127.0.0.1:1",
            vec!["--ca-cert", &ca],
            "need an https:// --server",
        ),
    ];
    for (server, options, expected) in cases {
        let mut args = vec!["account", "get", "8613800138000"];
        args.extend(options);
        let run = ocs_at(server, &args).await;
        assert_eq!(run.code, 2, "{expected}: {run:#?}");
        assert!(run.error_line().contains(expected), "{expected}: {run:#?}");
    }
}
