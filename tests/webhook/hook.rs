//! A real HTTP/1.1 listener standing in for the BSS: it accepts TCP connections on 127.0.0.1
//! (plain, or TLS with a rustls server configuration), parses each request (request line,
//! headers, `Content-Length` body), records it, and answers with the status the test's policy
//! chooses (optionally after a delay, or only once the client has given up: [`UNTIL_HANGUP`],
//! with the extra headers set), then closes the connection — or, started with
//! [`Hook::start_keep_alive`], answers `Connection: keep-alive` and reads the next request on
//! the same connection, counting connections apart from requests. Small on purpose: the
//! webhook client under test is the real one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

/// One request the listener received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
    /// When it arrived (complete).
    pub arrived: Instant,
    /// Whether the client presented a certificate (TLS only).
    pub client_certificate: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    /// The `x-ocs-event-id` header ("" without one).
    pub fn event_id(&self) -> String {
        self.header("x-ocs-event-id").unwrap_or_default().to_owned()
    }
}

/// How the listener answers: a status ([`CLOSE`]: none, the connection is closed) and a delay
/// before answering.
pub type Policy = Box<dyn FnMut(&Received) -> (u16, Duration) + Send>;

struct State {
    /// Requests as they arrive, before they are answered.
    seen: Mutex<Vec<Received>>,
    /// Requests answered (with their status).
    received: Mutex<Vec<Received>>,
    policy: Mutex<Policy>,
    /// Headers added to the answers with a status.
    headers: Mutex<HashMap<u16, Vec<(String, String)>>>,
    /// TLS handshakes that failed.
    failed_handshakes: Mutex<Vec<String>>,
    arrived: Notify,
    /// Whether a connection stays open for the next request (HTTP/1.1 keep-alive).
    keep_alive: bool,
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// Requests arrived (in `seen`) whose handling has not finished: waiting out their delay,
    /// held, or being answered.
    in_flight: AtomicUsize,
}

/// Counts a request in [`State::in_flight`] until dropped, whichever way its handling ends
/// (answered, not answered, or the listener stopped).
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn start(state: &'a State) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.arrived.notify_waiters();
    }
}

/// The listener; stops when dropped.
pub struct Hook {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
    tls: bool,
}

/// The "status" of a policy that closes the connection without answering.
pub const CLOSE: u16 = 0;

/// The "delay" of a policy that never answers: the request is held until the client gives up
/// and closes the connection (its timeout), whatever the time that takes.
pub const UNTIL_HANGUP: Duration = Duration::MAX;

/// Answers 200 at once.
pub fn always_ok() -> Policy {
    Box::new(|_| (200, Duration::ZERO))
}

impl Hook {
    /// Listens on an ephemeral port.
    pub async fn start(policy: Policy) -> Hook {
        Self::start_at("127.0.0.1:0".parse().expect("address"), policy).await
    }

    /// Listens on `addr` (a port reserved earlier, for "the BSS comes up later").
    pub async fn start_at(addr: SocketAddr, policy: Policy) -> Hook {
        Self::listen(addr, policy, None, false).await
    }

    /// Listens on an ephemeral port, keeping connections open between requests (HTTP/1.1
    /// keep-alive) until the client closes them.
    #[allow(dead_code)] // the webhook suite, not the others that include this listener
    pub async fn start_keep_alive(policy: Policy) -> Hook {
        let addr = "127.0.0.1:0".parse().expect("address");
        Self::listen(addr, policy, None, true).await
    }

    /// Listens on an ephemeral port with TLS (`https://`).
    pub async fn start_tls(policy: Policy, tls: Arc<ServerConfig>) -> Hook {
        let addr = "127.0.0.1:0".parse().expect("address");
        Self::listen(addr, policy, Some(TlsAcceptor::from(tls)), false).await
    }

    async fn listen(
        addr: SocketAddr,
        policy: Policy,
        tls: Option<TlsAcceptor>,
        keep_alive: bool,
    ) -> Hook {
        let listener = bind_retrying(addr).await;
        let addr = listener.local_addr().expect("hook address");
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
            policy: Mutex::new(policy),
            headers: Mutex::new(HashMap::new()),
            failed_handshakes: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            keep_alive,
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        });
        let tls_on = tls.is_some();
        let task = tokio::spawn(accept(listener, state.clone(), tls));
        Hook {
            addr,
            state,
            task,
            tls: tls_on,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/bss/events", self.addr)
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.state.policy.lock().expect("policy") = policy;
    }

    /// Headers added to every answer with `status` from now on (e.g. `Retry-After` on 429).
    pub fn set_response_headers(&self, status: u16, headers: &[(&str, &str)]) {
        self.state.headers.lock().expect("headers").insert(
            status,
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
    }

    /// Why the TLS handshakes that failed failed (rustls's errors).
    pub fn failed_handshakes(&self) -> Vec<String> {
        self.state
            .failed_handshakes
            .lock()
            .expect("failed handshakes")
            .clone()
    }

    /// Waits until `done` holds for the failed TLS handshakes (at most `limit`).
    pub async fn wait_failed_handshakes(&self, limit: Duration, done: impl Fn(&[String]) -> bool) {
        self.wait(limit, || done(&self.failed_handshakes())).await
    }

    /// TCP connections accepted so far.
    #[allow(dead_code)] // the webhook suite, not the others that include this listener
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests that arrived and are still being handled (not yet answered, nor given up).
    #[allow(dead_code)] // the fault suite
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no request is being handled (at most `limit`; panics past it, saying how
    /// many still are); how long that took. A request that arrives later is not awaited.
    #[allow(dead_code)] // the fault suite
    pub async fn wait_idle(&self, limit: Duration) -> Duration {
        let started = tokio::time::Instant::now();
        let idle = || self.in_flight() == 0;
        let late = || {
            format!(
                "the hook still handles {} request(s) after {limit:?}",
                self.in_flight()
            )
        };
        self.wait_or_panic(limit, idle, late).await;
        started.elapsed()
    }

    /// Requests that arrived, answered or not (yet).
    pub fn seen(&self) -> Vec<Received> {
        self.state.seen.lock().expect("seen").clone()
    }

    /// The event ids of the requests answered 2xx, in the order of the answers.
    #[allow(dead_code)] // the fault and HA suites
    pub fn answered(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(Received::event_id)
            .collect()
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("received").clone()
    }

    /// Waits until `done` holds for the requests answered so far (at most `limit`).
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&[Received]) -> bool) {
        self.wait(limit, || done(&self.received())).await
    }

    /// Waits until `done` holds for the requests arrived so far (at most `limit`).
    pub async fn wait_seen(&self, limit: Duration, done: impl Fn(&[Received]) -> bool) {
        self.wait(limit, || done(&self.seen())).await
    }

    async fn wait(&self, limit: Duration, done: impl Fn() -> bool) {
        let late = || {
            format!(
                "the hook did not receive what was expected in time; answered: {:#?}",
                self.received()
                    .iter()
                    .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
                    .collect::<Vec<_>>()
            )
        };
        self.wait_or_panic(limit, done, late).await
    }

    /// Waits until `done` holds, checked whenever a request arrives or ends (at most `limit`);
    /// past it panics with `late()`.
    async fn wait_or_panic(
        &self,
        limit: Duration,
        done: impl Fn() -> bool,
        late: impl Fn() -> String,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.state.arrived.notified();
            if done() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{}", late());
            }
        }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A free loopback port nobody listens on (yet).
pub async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}

async fn accept(listener: TcpListener, state: Arc<State>, tls: Option<TlsAcceptor>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = state.clone();
        match tls.clone() {
            None => {
                connections.spawn(serve(stream, state, false));
            }
            Some(acceptor) => {
                connections.spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(stream) => {
                            let client_certificate =
                                stream.get_ref().1.peer_certificates().is_some();
                            serve(stream, state, client_certificate).await;
                        }
                        Err(e) => {
                            state
                                .failed_handshakes
                                .lock()
                                .expect("failed handshakes")
                                .push(e.to_string());
                            state.arrived.notify_waiters();
                        }
                    }
                });
            }
        }
    }
}

/// Serves the requests of one connection: one, or (keep-alive) each until the client closes.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    state: Arc<State>,
    client_certificate: bool,
) {
    while let Some(mut request) = read_request(&mut stream).await {
        request.client_certificate = client_certificate;
        let keep_open = state.keep_alive && request.header("connection") != Some("close");
        if !answer(&mut stream, &state, request, keep_open).await || !keep_open {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Records `request` and answers it as the policy says; whether the connection can carry
/// another request.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    state: &State,
    mut request: Received,
    keep_open: bool,
) -> bool {
    // Counted until this returns: once it has, an answer is in `received` or never will be.
    let _in_flight = InFlight::start(state);
    state.seen.lock().expect("seen").push(request.clone());
    state.arrived.notify_waiters();
    let (status, delay) = {
        let mut policy = state.policy.lock().expect("policy");
        (policy)(&request)
    };
    let mut probe = [0u8; 1];
    if delay == UNTIL_HANGUP {
        // Held until the client closes the connection (or sends something, which it does not).
        let _ = stream.read(&mut probe).await;
        return false;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
        // A client that gave up (timeout, shutdown) closed the connection: nothing is answered.
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut probe)).await {
            Err(_) => {}
            Ok(_) => return false,
        }
    }
    if status == CLOSE {
        // Hang up without a word: the client sees the connection closed mid-request.
        return false;
    }
    request.status = status;
    let extra: String = state
        .headers
        .lock()
        .expect("headers")
        .get(&status)
        .into_iter()
        .flatten()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let connection = if keep_open { "keep-alive" } else { "close" };
    let response = format!(
        "HTTP/1.1 {status} Test\r\nContent-Length: 0\r\n{extra}Connection: {connection}\r\n\r\n"
    );
    let answered = stream.write_all(response.as_bytes()).await.is_ok();
    if answered {
        state.received.lock().expect("received").push(request);
        state.arrived.notify_waiters();
    }
    answered
}

async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Received> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(Received {
        method,
        path,
        headers,
        body,
        status: 0,
        arrived: Instant::now(),
        client_certificate: false,
    })
}

/// Binds `addr`. A port reserved earlier by a test (`free_addr`) may meanwhile be the local
/// port of some other connection on this busy machine, or linger in TIME_WAIT: the bind
/// reuses addresses and is retried while the port is in use (bounded).
async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        let bound = socket.bind(addr).and_then(|()| socket.listen(1024));
        match bound {
            Ok(listener) => return listener,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind the hook on {addr}: {e}"),
        }
    }
}
