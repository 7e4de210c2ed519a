//! The gRPC connection of the client, and how its failures read: one line, an exit code.

use std::fmt;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

use super::output;
use super::{Connection, OutputFormat};
use crate::proto;
use crate::proto::account_lifecycle_client::AccountLifecycleClient;
use crate::proto::bss_events_client::BssEventsClient;
use crate::proto::lifecycle_analytics_client::LifecycleAnalyticsClient;
use crate::proto::test_clock_client::TestClockClient;
use crate::wire::REPLAYED_METADATA;

/// How long connecting may take before the server counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of one unary call (a stream has none).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a client command failed.
#[derive(Debug)]
pub enum CliError {
    /// Bad input (exit 2): nothing was sent.
    Usage(String),
    /// The server is not reachable at `server`.
    Connect { server: String, cause: String },
    /// The server answered with an error; `request_id` for a mutation, so a retry can reuse it.
    Server {
        status: Box<Status>,
        request_id: Option<String>,
    },
    /// Reading a file or writing output failed.
    Io(String),
    /// Whoever read our stdout went away (`| head`): stop quietly.
    StdoutClosed,
}

impl CliError {
    /// A failed mutation: the message carries its `request_id`.
    pub fn mutation(status: Status, request_id: &str) -> Self {
        CliError::Server {
            status: Box::new(status),
            request_id: Some(request_id.to_owned()),
        }
    }

    /// 2 for bad input (ours or the server's INVALID_ARGUMENT), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Server { status, .. } if status.code() == Code::InvalidArgument => 2,
            CliError::StdoutClosed => 0,
            _ => 1,
        }
    }
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        CliError::Server {
            status: Box::new(status),
            request_id: None,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) | CliError::Io(message) => f.write_str(&one_line(message)),
            CliError::Connect { server, cause } => write!(
                f,
                "cannot connect to the server at {server}: {}",
                one_line(cause)
            ),
            CliError::Server { status, request_id } => {
                write!(f, "{}", describe(status))?;
                // A retry with the same key applies the request at most once.
                match request_id {
                    Some(id) if retryable(status.code()) => {
                        write!(f, " (retry with --request-id {id})")
                    }
                    Some(id) => write!(f, " (request_id {id})"),
                    None => Ok(()),
                }
            }
            CliError::StdoutClosed => f.write_str("stdout closed"),
        }
    }
}

/// `NOT_FOUND (ACCOUNT_NOT_FOUND): no account with msisdn 8613800000000`.
pub fn describe(status: &Status) -> String {
    let reason = status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default();
    let code = code_name(status.code());
    let message = if status.message().is_empty() {
        status.code().description().to_owned()
    } else {
        one_line(status.message())
    };
    if reason.is_empty() {
        format!("{code}: {message}")
    } else {
        format!("{code} ({reason}): {message}")
    }
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal
    )
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The gRPC name of a status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `error: a: b: c` from an error and its sources, without repeating a cause that its parent
/// already quoted.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The `authorization` metadata value for `token`.
fn bearer(token: &str) -> Result<MetadataValue<Ascii>, CliError> {
    let scheme = token.trim_start().get(..7);
    if scheme.is_some_and(|s| s.eq_ignore_ascii_case("bearer ")) {
        return Err(CliError::Usage(
            "--token takes the token alone (ocs_…), without \"Bearer \": the client sends \
             `authorization: Bearer <token>` itself"
                .into(),
        ));
    }
    format!("Bearer {token}").parse().map_err(|_| {
        CliError::Usage(
            "--token may only hold visible ASCII characters (it is sent as a header)".into(),
        )
    })
}

/// One connection to the server, shared by every call of a command.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    authorization: Option<MetadataValue<Ascii>>,
}

/// The TLS settings of an https:// server: `--ca-cert` (else the public roots) and the client
/// certificate. The files are read and checked here, so a wrong path is a usage error, not a
/// failed handshake.
fn tls_config(connection: &Connection) -> Result<ClientTlsConfig, CliError> {
    use crate::config::security::{read_certificates, read_private_key};
    let usage = |e: crate::config::ConfigError| CliError::Usage(e.0);
    let tls = match &connection.ca_cert {
        Some(path) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
            read_certificates("--ca-cert", path).map_err(usage)?,
        )),
        None => ClientTlsConfig::new().with_webpki_roots(),
    };
    match (&connection.client_cert, &connection.client_key) {
        (None, None) => Ok(tls),
        (Some(cert), Some(key)) => Ok(tls.identity(Identity::from_pem(
            read_certificates("--client-cert", cert).map_err(usage)?,
            read_private_key("--client-key", key).map_err(usage)?,
        ))),
        (Some(_), None) => Err(CliError::Usage(
            "--client-cert needs --client-key (env OCS_CLIENT_KEY)".into(),
        )),
        (None, Some(_)) => Err(CliError::Usage(
            "--client-key needs --client-cert (env OCS_CLIENT_CERT)".into(),
        )),
    }
}

impl Client {
    /// Connects now, so that a server that is down is one clear line before anything else.
    pub async fn connect(connection: &Connection) -> Result<Client, CliError> {
        let tls_options = connection.ca_cert.is_some()
            || connection.client_cert.is_some()
            || connection.client_key.is_some();
        let server = if connection.server.contains("://") {
            connection.server.clone()
        } else if tls_options {
            format!("https://{}", connection.server)
        } else {
            format!("http://{}", connection.server)
        };
        let https = server
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        if tls_options && !https {
            return Err(CliError::Usage(format!(
                "--ca-cert, --client-cert and --client-key need an https:// --server, not {server}"
            )));
        }
        let authorization = connection.token.as_deref().map(bearer).transpose()?;
        let mut endpoint = Endpoint::from_shared(server.clone())
            .map_err(|e| CliError::Usage(format!("--server {server:?} is not a URL: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT);
        if https {
            endpoint = endpoint.tls_config(tls_config(connection)?).map_err(|e| {
                CliError::Usage(format!("TLS settings for {server}: {}", error_chain(&e)))
            })?;
        }
        let channel = endpoint.connect().await.map_err(|e| CliError::Connect {
            server,
            cause: error_chain(&e),
        })?;
        Ok(Client {
            channel,
            authorization,
        })
    }

    /// `message` with the bearer token and the call's timeout.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(CALL_TIMEOUT);
        self.authorize(&mut request);
        request
    }

    fn authorize<T>(&self, request: &mut Request<T>) {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
    }

    pub fn accounts(&self) -> AccountLifecycleClient<Channel> {
        AccountLifecycleClient::new(self.channel.clone())
    }

    pub fn events(&self) -> crate::proto::bss_events_client::BssEventsClient<Channel> {
        BssEventsClient::new(self.channel.clone())
    }

    pub fn analytics(&self) -> LifecycleAnalyticsClient<Channel> {
        LifecycleAnalyticsClient::new(self.channel.clone())
    }

    pub fn test_clock(&self) -> TestClockClient<Channel> {
        TestClockClient::new(self.channel.clone())
    }
}

/// One page of a listing: its items and the next page's token (empty after the last page).
pub type Page<T> = (Vec<T>, String);

/// A listing request the server answers a page at a time, with the call that answers it.
pub(crate) trait Listing: Clone {
    type Item;

    /// Asks for the page at `page_token` next.
    fn set_page_token(&mut self, page_token: String);

    /// Asks the server for this page.
    async fn fetch(self, client: &Client) -> Result<Page<Self::Item>, Status>;
}

/// `request => item: service.call, items field;`: the [`Listing`] of one listing call.
macro_rules! listing {
    ($($request:ty => $item:ty: $service:ident.$call:ident, $items:ident;)+) => {$(
        impl Listing for $request {
            type Item = $item;

            fn set_page_token(&mut self, page_token: String) {
                self.page_token = page_token;
            }

            async fn fetch(self, client: &Client) -> Result<Page<$item>, Status> {
                let page = client.$service().$call(client.request(self)).await?.into_inner();
                Ok((page.$items, page.next_page_token))
            }
        }
    )+};
}

listing! {
    proto::ListAccountsRequest => proto::Account: accounts.list_accounts, accounts;
    proto::GetAccountHistoryRequest => proto::HistoryEntry: accounts.get_account_history, entries;
    proto::ListDeadLettersRequest => proto::DeadLetter: events.list_dead_letters, events;
}

/// The items of a paged listing from `request`'s page token on, and the token after them: every
/// page, or only the first when `all` is false.
pub async fn pages<L: Listing>(
    client: &Client,
    mut request: L,
    all: bool,
) -> Result<Page<L::Item>, CliError> {
    let mut items = Vec::new();
    loop {
        let (page, next_page_token) = request.clone().fetch(client).await?;
        items.extend(page);
        if !all || next_page_token.is_empty() {
            return Ok((items, next_page_token));
        }
        request.set_page_token(next_page_token);
    }
}

/// A TestClock call's error; UNIMPLEMENTED means the server runs on the system clock.
pub fn without_manual_clock(status: Status) -> CliError {
    if status.code() == Code::Unimplemented {
        return CliError::Usage(
            "the server runs on the system clock: the TestClock service (clock get|set|advance) \
             exists only on a server started with --clock manual"
                .into(),
        );
    }
    CliError::from(status)
}

/// The gRPC health status of each of `services` (`""`: the server as a whole), by name:
/// `SERVING`, `NOT_SERVING`, or `UNKNOWN` for a service the server does not know.
pub async fn health(
    client: &Client,
    services: &[String],
) -> Result<Vec<(String, String)>, CliError> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(client.channel.clone());
    let mut statuses = Vec::new();
    for service in services {
        let request = client.request(HealthCheckRequest {
            service: service.clone(),
        });
        let status = match health.check(request).await {
            Ok(answer) => ServingStatus::try_from(answer.into_inner().status)
                .map(|s| s.as_str_name().to_owned())
                .unwrap_or_else(|_| "UNKNOWN".into()),
            Err(status) if status.code() == Code::NotFound => "UNKNOWN".into(),
            Err(status) => return Err(status.into()),
        };
        statuses.push((service.clone(), status));
    }
    Ok(statuses)
}

/// Whether an Account-returning mutation was a replay (`ocs-replayed: true` metadata).
pub fn replayed<T>(response: &Response<T>) -> bool {
    response
        .metadata()
        .get(REPLAYED_METADATA)
        .is_some_and(|v| v.as_bytes() == b"true")
}

/// `events tail`: prints events as they arrive (table: one aligned line each; JSON: one object
/// per line). With `idle`, stops once no event has come for that long; without, runs until the
/// stream ends (the server shuts down) or the process is interrupted.
pub async fn tail_events(
    client: &Client,
    format: OutputFormat,
    after: u64,
    types: Vec<i32>,
    idle: Option<Duration>,
) -> Result<(), CliError> {
    let mut request = Request::new(proto::SubscribeRequest {
        after_sequence: after,
        types,
    });
    client.authorize(&mut request);
    let mut stream = client.events().subscribe(request).await?.into_inner();
    if format == OutputFormat::Table {
        output::write_stdout(&output::event_line_header())?;
    }
    loop {
        let next = match idle {
            Some(idle) => match tokio::time::timeout(idle, stream.next()).await {
                Ok(next) => next,
                Err(_) => return Ok(()),
            },
            None => stream.next().await,
        };
        let event = match next {
            None => return Ok(()),
            Some(event) => event?,
        };
        let line = match format {
            OutputFormat::Table => output::event_line(&event),
            OutputFormat::Json => output::event_json(&event).to_string(),
        };
        output::write_stdout(&line)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_token_is_sent_as_a_bearer_authorization_header() {
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let client = Client {
            channel: channel.clone(),
            authorization: Some(bearer("s3cret").unwrap()),
        };
        let request = client.request(proto::GetAccountRequest::default());
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        let anonymous = Client {
            channel,
            authorization: None,
        };
        let request = anonymous.request(proto::GetAccountRequest::default());
        assert!(request.metadata().get("authorization").is_none());
        assert_eq!(bearer("bad\ntoken").unwrap_err().exit_code(), 2);
        let pasted = bearer("Bearer ocs_abc").unwrap_err();
        assert_eq!(pasted.exit_code(), 2);
        assert!(
            pasted.to_string().contains("without \"Bearer \""),
            "{pasted}"
        );
    }

    #[test]
    fn a_status_reads_as_code_reason_and_message_on_one_line() {
        let status = crate::api::convert::status(
            Code::NotFound,
            "ACCOUNT_NOT_FOUND",
            "no account with msisdn 8613800000000",
        );
        assert_eq!(
            describe(&status),
            "NOT_FOUND (ACCOUNT_NOT_FOUND): no account with msisdn 8613800000000"
        );
        let error = CliError::mutation(Status::unavailable("storage\ndown"), "r-1");
        assert_eq!(
            error.to_string(),
            "UNAVAILABLE: storage down (retry with --request-id r-1)"
        );
        assert_eq!(error.exit_code(), 1);
        assert_eq!(CliError::from(Status::invalid_argument("x")).exit_code(), 2);
    }
}
