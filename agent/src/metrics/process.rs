//! The process's own series, read from `/proc/self` at each scrape under the names every
//! Prometheus client uses (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...),
//! so that the dashboards made for other services read Orbit's too.
//!
//! Reading `/proc` blocks (briefly): the metrics server renders on a blocking thread. Where
//! `/proc` cannot be read (another OS, a locked-down mount) the series are left out, never
//! invented.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// The collector of `process_*` series.
#[derive(Debug)]
pub(super) struct Process;

/// What `/proc/self/stat` says, in the units of the series.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    threads: i64,
    /// Seconds after boot.
    started: f64,
    virtual_bytes: i64,
    resident_pages: i64,
}

/// Reads the fields of `/proc/PID/stat` that matter here. The command name, in parentheses, may
/// hold spaces and parentheses itself, so fields are counted from the last `)`.
fn parse_stat(text: &str, ticks_per_second: f64) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 of proc_pid_stat(5), the state.
    let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
    let ticks = |n: usize| Some(field(n)? as f64 / ticks_per_second);
    Some(Stat {
        cpu_seconds: ticks(14)? + ticks(15)?,
        threads: field(20)?,
        started: ticks(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The boot time, in Unix seconds, from the `btime` line of `/proc/stat`.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn open_fds() -> Option<i64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    // One of them is the directory being read.
    Some(entries.count() as i64 - 1)
}

fn max_fds() -> Option<i64> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current.and_then(|n| i64::try_from(n).ok())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl Into<f64>,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value.into());
    gauge.encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|text| parse_stat(&text, ticks));
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_boot_time(&text));
        let e = &mut encoder;
        let (seconds, bytes) = (Some(&Unit::Seconds), Some(&Unit::Bytes));
        if let Some(stat) = stat {
            let cpu = ConstCounter::new(stat.cpu_seconds);
            let help = "User and system CPU time spent";
            cpu.encode(e.encode_descriptor("process_cpu", help, seconds, MetricType::Counter)?)?;
            let page = rustix::param::page_size() as f64;
            let resident = stat.resident_pages as f64 * page;
            let help = "Resident memory size";
            gauge(e, "process_resident_memory", help, bytes, resident)?;
            let help = "Virtual memory size";
            gauge(
                e,
                "process_virtual_memory",
                help,
                bytes,
                stat.virtual_bytes as f64,
            )?;
            gauge(
                e,
                "process_threads",
                "OS threads",
                None,
                stat.threads as f64,
            )?;
            if let Some(boot) = boot {
                let start = boot as f64 + stat.started;
                let help = "Start time of the process since the Unix epoch";
                gauge(e, "process_start_time", help, seconds, start)?;
            }
        }
        if let Some(open) = open_fds() {
            gauge(
                e,
                "process_open_fds",
                "Open file descriptors",
                None,
                open as f64,
            )?;
        }
        if let Some(max) = max_fds() {
            let help = "The limit on open file descriptors";
            gauge(e, "process_max_fds", help, None, max as f64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        // proc_pid_stat(5): pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime
        // vsize rss ...
        let text = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 \
                    123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let stat = parse_stat(text, 100.0).unwrap();
        assert_eq!(
            stat,
            Stat {
                cpu_seconds: 3.0,
                threads: 7,
                started: 10.0,
                virtual_bytes: 123_456_789,
                resident_pages: 2048,
            }
        );
        assert_eq!(parse_stat("garbage", 100.0), None);
        assert_eq!(parse_stat("1 (x) S 1 2", 100.0), None);
    }

    #[test]
    fn the_boot_time_is_the_btime_line() {
        let text = "cpu  1 2 3\nintr 5\nbtime 1764800000\nprocesses 9\n";
        assert_eq!(parse_boot_time(text), Some(1_764_800_000));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Process));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
                .parse()
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let started = value("process_start_time_seconds");
        assert!(
            started <= now() + 1.0 && started > now() - 86_400.0,
            "{started}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{text}"
        );
    }
}
