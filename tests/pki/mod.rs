//! A throw-away PKI for the TLS tests: a CA, a server certificate for localhost / 127.0.0.1 /
//! ::1 and a client certificate, all signed by the CA, made by `scripts/make-test-certs.sh`
//! (openssl) in a temporary directory; and TLS settings built from them.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// `ca.pem`, `ca.key`, `server.pem`, `server.key`, `client.pem`, `client.key` in a temporary
/// directory (removed when dropped).
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn make() -> Pki {
        let dir = tempfile::tempdir().expect("temporary directory");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-test-certs.sh");
        let output = std::process::Command::new("sh")
            .arg(&script)
            .arg(dir.path())
            .output()
            .expect("run make-test-certs.sh (needs openssl)");
        assert!(
            output.status.success(),
            "make-test-certs.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `path` as a string (for command lines and environment variables).
    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    pub fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("PEM file")
    }

    /// A gRPC client over TLS that trusts the test CA (and presents the client certificate if
    /// asked).
    pub fn channel(&self, addr: SocketAddr, client_cert: bool) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.pem("ca.pem")))
            .domain_name("localhost");
        if client_cert {
            tls = tls.identity(Identity::from_pem(
                self.pem("client.pem"),
                self.pem("client.key"),
            ));
        }
        Channel::from_shared(format!("https://{addr}"))
            .expect("endpoint")
            .tls_config(tls)
            .expect("client TLS configuration")
            .connect_lazy()
    }

    /// A rustls server configuration with the server certificate; with `client_auth`, every
    /// client must present a certificate from the test CA.
    pub fn rustls_server(&self, client_auth: bool) -> Arc<tokio_rustls::rustls::ServerConfig> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(self.path("server.pem"))
                .expect("server.pem")
                .collect::<Result<_, _>>()
                .expect("server certificates");
        let key = PrivateKeyDer::from_pem_file(self.path("server.key")).expect("server.key");
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(self.path("ca.pem")).expect("ca.pem") {
                roots.add(ca.expect("CA certificate")).expect("add the CA");
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .expect("server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
