//! `ocs-bench overload` (issue 15 item 9): a flood of `--overload-factor` × `--overload-limit`
//! concurrent callers sending Recharge for `--seconds`, against the real server in-process with
//! `grpc.max_concurrent_requests = --overload-limit`. Each caller sends its next call as soon as
//! the last one is answered, shed or not: no backoff, the harshest client. The baseline is the
//! same flood against the same server with the limit at the largest value the configuration
//! takes (100 000): nothing is shed, every call waits its turn inside the server.
//!
//! Recharge, not Authorize: a recharge waits for the database (SQLite's one writer, a
//! PostgreSQL commit), so what piles up in a flood is calls waiting inside the server, the
//! queue the limit bounds. Authorize is answered from memory (the facts cache) at the speed of
//! the CPU, which the load generator shares here: a flood of it would measure the CPU.
//!
//! Memory is the whole process's `VmRSS` (/proc/self/status): the server **and** the load
//! generator, sampled every 10 ms during each flood. In each round the limited server is
//! flooded first, so its first figures do not carry the unbounded flood's allocations.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_types::StatusExt;

use ocs_lifecycle::server::admission::OVERLOADED;

use super::{
    Args, Measured, ServerUnderTest, machine, measure_answers, provision, recharge_request,
    server_config, sweep_bench,
};

/// The baseline's `grpc.max_concurrent_requests`: the largest the configuration takes.
const UNLIMITED: u32 = 100_000;

/// What became of one call of the flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Admitted,
    /// RESOURCE_EXHAUSTED with ErrorInfo reason OVERLOADED.
    Shed,
    Failed(tonic::Code),
}

/// One server's figures, over the rounds.
struct Flood {
    limit: u32,
    admitted: Measured,
    shed: Measured,
    /// Calls answered otherwise, by code.
    failed: BTreeMap<String, u64>,
    /// Process VmRSS in KiB: before its first flood, the peak sampled, after its last flood.
    rss_before: Option<u64>,
    rss_peak: u64,
    rss_after: u64,
}

impl Flood {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            admitted: Measured::empty(),
            shed: Measured::empty(),
            failed: BTreeMap::new(),
            rss_before: None,
            rss_peak: 0,
            rss_after: 0,
        }
    }

    fn add(&mut self, seconds: f64, answers: Vec<(Answer, u64)>, [before, peak, after]: [u64; 3]) {
        let (mut admitted, mut shed) = (Vec::new(), Vec::new());
        for (answer, us) in answers {
            match answer {
                Answer::Admitted => admitted.push(us),
                Answer::Shed => shed.push(us),
                Answer::Failed(code) => *self.failed.entry(format!("{code:?}")).or_default() += 1,
            }
        }
        self.admitted.add(Measured {
            name: "admitted Recharge",
            seconds,
            latencies: admitted,
        });
        self.shed.add(Measured {
            name: "shed Recharge",
            seconds,
            latencies: shed,
        });
        self.rss_before.get_or_insert(before);
        self.rss_peak = self.rss_peak.max(peak);
        self.rss_after = after;
    }

    fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    fn json(&self) -> serde_json::Value {
        let mut section = self.admitted.summary();
        section["name"] = format!("max_concurrent_requests {}", self.limit).into();
        section["shed"] = self.shed.summary();
        section["errors"] = serde_json::json!(self.failed);
        section["rss_before_mib"] = mib(self.rss_before.unwrap_or(0)).into();
        section["rss_peak_mib"] = mib(self.rss_peak).into();
        section["rss_after_mib"] = mib(self.rss_after).into();
        section
    }
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Runs `work` while sampling this process's VmRSS every 10 ms; returns its output and the
/// RSS before, at the peak sampled and after, in KiB.
async fn sampling_rss<T>(work: impl Future<Output = T>) -> (T, [u64; 3]) {
    let rss = || sweep_bench::rss_kib(std::process::id(), "VmRSS:");
    let before = rss();
    let peak = Arc::new(AtomicU64::new(before));
    let done = CancellationToken::new();
    let sampler = tokio::spawn({
        let (peak, done) = (peak.clone(), done.clone());
        async move {
            while tokio::time::timeout(Duration::from_millis(10), done.cancelled())
                .await
                .is_err()
            {
                peak.fetch_max(rss(), Ordering::Relaxed);
            }
        }
    });
    let output = work.await;
    done.cancel();
    let _ = sampler.await;
    let after = rss();
    (
        output,
        [before, peak.load(Ordering::Relaxed).max(after), after],
    )
}

/// `callers` callers recharging through `server` (its limit `limit`) for the round.
async fn flood(
    args: &Args,
    server: &ServerUnderTest,
    callers: usize,
    (limit, round): (u32, u32),
) -> (f64, Vec<(Answer, u64)>) {
    let accounts = args.accounts;
    let clients = Arc::new(server.clients.clone());
    measure_answers(callers, Duration::from_secs(args.seconds), move |n| {
        let mut c = clients[n as usize % clients.len()].clone();
        let request_id = format!("bench-o-{limit}-{round}-{n}");
        async move {
            match c.recharge(recharge_request(n, accounts, request_id)).await {
                Ok(_) => Answer::Admitted,
                Err(s)
                    if s.code() == tonic::Code::ResourceExhausted
                        && s.get_error_details()
                            .error_info()
                            .is_some_and(|i| i.reason == OVERLOADED) =>
                {
                    Answer::Shed
                }
                Err(s) => Answer::Failed(s.code()),
            }
        }
    })
    .await
}

/// The overload measurement: its section of the JSON document.
pub(super) async fn run(args: &Args) -> serde_json::Value {
    let (dir, url) = super::fresh_database(args).await;
    let callers = args.overload_factor as usize * args.overload_limit as usize;
    // Set up through a server with the default limit (provisioning is not a flood).
    let setup = ServerUnderTest::start(server_config(args, &url), args.clients).await;
    provision(&setup.clients, args.accounts).await;
    setup.stop().await;
    let mut floods = [Flood::new(args.overload_limit), Flood::new(UNLIMITED)];
    for round in 0..args.rounds {
        for f in &mut floods {
            eprintln!(
                "overload: {callers} callers, max_concurrent_requests {} …",
                f.limit
            );
            let mut config = server_config(args, &url);
            config.grpc.max_concurrent_requests = f.limit;
            let server = ServerUnderTest::start(config, callers).await;
            let ((seconds, answers), rss) =
                sampling_rss(flood(args, &server, callers, (f.limit, round))).await;
            server.stop().await;
            f.add(seconds, answers, rss);
        }
    }
    super::remove_database(args, &dir, &url).await;

    let [limited, unbounded] = &floods;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let rate_ratio = ratio(limited.admitted.rate(), unbounded.admitted.rate());
    let p99_ratio = ratio(
        limited.admitted.percentile_us(0.99) as f64,
        unbounded.admitted.percentile_us(0.99) as f64,
    );
    let rss_ratio = ratio(limited.rss_peak as f64, unbounded.rss_peak as f64);
    if !args.json {
        println!(
            "overload, backend {:?}: Recharge from {callers} callers (×{} the limit), {} accounts, \
             {} rounds of {} s each; RSS is the whole process (server and load generator); {}",
            args.backend,
            args.overload_factor,
            args.accounts,
            args.rounds,
            args.seconds,
            machine()
        );
        println!(
            "| max_concurrent_requests | admitted /s | admitted p50 / p99 µs | shed /s (calls) \
             | shed p50 / p99 µs | other errors | RSS before / peak / after MiB |"
        );
        println!("|---|---:|---:|---:|---:|---|---:|");
        for f in &floods {
            println!(
                "| {} | {:.0} | {} / {} | {:.0} ({}) | {} / {} | {} {:?} | {} / {} / {} |",
                f.limit,
                f.admitted.rate(),
                f.admitted.percentile_us(0.5),
                f.admitted.percentile_us(0.99),
                f.shed.rate(),
                f.shed.ops(),
                f.shed.percentile_us(0.5),
                f.shed.percentile_us(0.99),
                f.failed_total(),
                f.failed,
                mib(f.rss_before.unwrap_or(0)),
                mib(f.rss_peak),
                mib(f.rss_after),
            );
        }
        println!(
            "| limited ÷ unlimited | {rate_ratio:.2} | p99 {p99_ratio:.2} | | | | peak {rss_ratio:.2} |"
        );
    }
    let mut section = limited.json();
    section["baseline"] = unbounded.json();
    section["ratio"] = rate_ratio.into();
    section["p99_ratio"] = p99_ratio.into();
    section["rss_peak_ratio"] = rss_ratio.into();
    section["callers"] = callers.into();
    section["accounts"] = args.accounts.into();
    section["rounds"] = args.rounds.into();
    section["seconds"] = args.seconds.into();
    section
}
