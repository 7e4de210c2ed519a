//! The `process_*` metrics, read from `/proc/self` at each scrape (Linux; left out where they
//! cannot be read): start time, CPU time, resident memory, open and allowed file descriptors,
//! named as Prometheus's own clients name them.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::{Registry, Unit};

use super::{read_gauge, read_seconds};

/// Clock ticks per second of `/proc` times: the kernel reports them in USER_HZ, which is 100 on
/// every Linux architecture in use (Prometheus's Go `procfs` assumes the same).
const USER_HZ: f64 = 100.0;

/// What `/proc/self/stat` and `/proc/stat` say of the process.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ProcessTimes {
    /// Unix time the process started, in seconds.
    start_time: f64,
    /// User and system CPU time, in seconds.
    cpu_seconds: f64,
}

/// Parses `/proc/self/stat` (`stat`) with the boot time (`btime` of `/proc/stat`).
fn process_times(stat: &str, boot_time: f64) -> Option<ProcessTimes> {
    // The command name (field 2) is in parentheses and may hold spaces: fields 3… follow the
    // last ')'.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    Some(ProcessTimes {
        cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
        start_time: boot_time + field(22)? / USER_HZ,
    })
}

fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit of open files, from `/proc/self/limits`.
fn max_fds(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The `process_*` metrics, each left out when it cannot be read (not Linux).
pub(super) fn register_process(read: &mut Registry) {
    let times = std::fs::read_to_string("/proc/stat")
        .ok()
        .as_deref()
        .and_then(boot_time)
        .and_then(|boot| {
            let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
            process_times(&stat, boot)
        });
    if let Some(times) = times {
        read_seconds(
            read,
            "process_start_time",
            "Start time of the process since the Unix epoch",
            times.start_time,
        );
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        cpu.inc_by(times.cpu_seconds);
        read.register_with_unit(
            "process_cpu",
            "User and system CPU time spent",
            Unit::Seconds,
            cpu,
        );
    }
    if let Some(bytes) = resident_memory_bytes() {
        let help = "Resident memory of the process";
        read_gauge(
            read,
            "process_resident_memory",
            help,
            Some(Unit::Bytes),
            bytes,
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        // The directory's own descriptor is one of them while it is read.
        let open = entries.count().saturating_sub(1) as i64;
        read_gauge(
            read,
            "process_open_fds",
            "Open file descriptors",
            None,
            open,
        );
    }
    if let Some(limit) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .as_deref()
        .and_then(max_fds)
    {
        let help = "The most file descriptors the process may open";
        read_gauge(read, "process_max_fds", help, None, limit);
    }
}

/// Resident memory from `/proc/self/status` (Linux); `None` elsewhere.
fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_times_are_read_after_the_command_name() {
        let stat = "4242 (ocs (life) cycle) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 150 0 0 20 0 9 0 360000 100000000 5000 18446744073709551615";
        let times = process_times(stat, 1_700_000_000.0).expect("parsed");
        assert_eq!(times.cpu_seconds, 4.0);
        assert_eq!(times.start_time, 1_700_003_600.0);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1.7e9)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_fds(limits), Some(1024));
    }

    #[test]
    fn resident_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_memory_bytes().is_some_and(|b| b > 0));
        }
    }
}
