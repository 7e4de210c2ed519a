//! The sweep's metrics ([`SweepMetrics`]): runs by status, transitions by name, accounts
//! examined, the last run's duration and the last success, recorded by whoever ran the sweep.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::store::{StoreError, SweepRunStatus};
use crate::sweep::{SweepCounts, SweepObserver, SweepReport};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabel {
    transition: &'static str,
}

/// The sweep's metrics: real sweeps only (a dry run is a forecast, not a sweep), recorded by
/// whoever ran it (the scheduler, `AdvanceStates`).
#[derive(Debug, Default)]
pub struct SweepMetrics {
    runs: Family<StatusLabel, Counter>,
    transitions: Family<TransitionLabel, Counter>,
    examined: Counter,
    last_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl SweepMetrics {
    /// Records one real sweep that took `elapsed`: its status and, when it succeeded, its
    /// counts. (A failed run's committed batches are in `sweep_runs`, not counted here.)
    pub fn record(&self, outcome: Result<&SweepReport, &StoreError>, elapsed: Duration) {
        self.last_duration.set(elapsed.as_secs_f64());
        let report = match outcome {
            Ok(report) => report,
            Err(_) => {
                self.runs
                    .get_or_create(&StatusLabel {
                        status: SweepRunStatus::Failed.as_str(),
                    })
                    .inc();
                return;
            }
        };
        self.runs
            .get_or_create(&StatusLabel {
                status: SweepRunStatus::Succeeded.as_str(),
            })
            .inc();
        self.examined.inc_by(report.counts.examined);
        // The `transition` label values are the counts' names.
        for (transition, count) in report.counts.named() {
            self.transitions
                .get_or_create(&TransitionLabel { transition })
                .inc_by(count);
        }
        // Real time, not the service clock: alerts compare it with Prometheus's `time()`.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_success.set(now.as_secs_f64());
    }

    /// How long the last sweep run of this process took; `None` before the first.
    pub fn last_duration(&self) -> Option<Duration> {
        let runs: u64 = ["succeeded", "failed"]
            .into_iter()
            .map(|status| self.runs.get_or_create(&StatusLabel { status }).get())
            .sum();
        (runs > 0).then(|| Duration::from_secs_f64(self.last_duration.get().max(0.0)))
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        // Every label value from the start, so that rate() and alerts see a 0 before the first.
        for status in [SweepRunStatus::Succeeded, SweepRunStatus::Failed] {
            let status = status.as_str();
            self.runs.get_or_create(&StatusLabel { status }).inc_by(0);
        }
        for (transition, _) in SweepCounts::default().named() {
            self.transitions
                .get_or_create(&TransitionLabel { transition })
                .inc_by(0);
        }
        registry.register(
            "ocs_sweep_runs",
            "Real sweeps run by this process, by status (succeeded, failed)",
            self.runs.clone(),
        );
        registry.register(
            "ocs_sweep_transitions",
            "Boundary transitions and notices of the succeeded sweeps, by transition",
            self.transitions.clone(),
        );
        registry.register(
            "ocs_sweep_accounts_examined",
            "Due accounts the succeeded sweeps looked at",
            self.examined.clone(),
        );
        // A gauge of the last run (not a histogram of all runs): named so.
        registry.register_with_unit(
            "ocs_sweep_last_duration",
            "How long the last sweep run took",
            Unit::Seconds,
            self.last_duration.clone(),
        );
        registry.register_with_unit(
            "ocs_sweep_last_success_timestamp",
            "Unix time at which the last succeeded sweep finished (0: none since start)",
            Unit::Seconds,
            self.last_success.clone(),
        );
    }
}

impl SweepObserver for SweepMetrics {
    fn sweep_finished(&self, outcome: Result<&SweepReport, &StoreError>, elapsed: Duration) {
        self.record(outcome, elapsed);
    }
}
