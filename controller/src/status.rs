//! `orbitctl status`: asks stars, all at once, whether they are up and what they are doing, and
//! prints a table or JSON.
//!
//! Each star gets its own connection and its own bounded wait, so one star that is down never
//! delays the report on the others beyond [`connect::CONNECT_TIMEOUT`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, StarStatus, TransferStatus, WireError};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::connect::{self, ConnectError, StarConnection, StreamError};
use crate::grid::{Grid, GridError};
use crate::human;
use crate::spec::StarAddr;

/// How long a connected star has to answer a status request.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// Ask stars whether they are up: version, uptime, transfers in flight and roots; then list
/// the transfers in flight with their progress.
///
/// Exits 0 if every star asked answered, 1 otherwise (with --json, each star that did not says
/// why in "code" and "error").
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stars to ask. Default: every star in grid.toml.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,

    /// Print one JSON object instead of a table: {"type":"status","stars":[..]}, each star with
    /// "up" and either its status or "code", "retryable" and "error".
    #[arg(long)]
    pub json: bool,
}

/// Why one star gave no status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// It could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The exchange failed.
    #[error("{star}: {error}")]
    Stream {
        /// The star.
        star: String,
        /// What happened.
        error: StreamError,
    },
    /// It refused the request.
    #[error("{star} refused the status request: {error}")]
    Refused {
        /// The star.
        star: String,
        /// Its reason.
        error: WireError,
    },
    /// It answered with something else.
    #[error("{star}: unexpected answer to a status request: {what}")]
    Unexpected {
        /// The star.
        star: String,
        /// The answer.
        what: String,
    },
    /// It connected but did not answer in time.
    #[error("{star}: no status within {} s", STATUS_TIMEOUT.as_secs())]
    Timeout {
        /// The star.
        star: String,
    },
}

impl StatusError {
    /// The wire code that fits.
    pub fn code(&self) -> ErrorCode {
        match self {
            StatusError::Connect(e) => e.code(),
            StatusError::Stream { error, .. } => error.code(),
            StatusError::Refused { error, .. } => error.code,
            StatusError::Unexpected { .. } => ErrorCode::Internal,
            StatusError::Timeout { .. } => ErrorCode::DeadlineExceeded,
        }
    }
}

/// Why `orbitctl status` failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusCommandError {
    /// The grid could not be read or does not list a star.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// Some stars did not answer; the report has been printed.
    #[error("{} of {total} stars did not answer: {}", down.len(), down.join(", "))]
    Down {
        /// The stars that did not answer.
        down: Vec<String>,
        /// How many were asked.
        total: usize,
    },
}

/// Asks the star `star` at `addr` for its status.
///
/// # Errors
///
/// [`StatusError`] naming the star.
pub async fn query_status(
    tls: Arc<rustls::ClientConfig>,
    star: &str,
    addr: &StarAddr,
) -> Result<StarStatus, StatusError> {
    let addr = connect::resolve(star, addr).await?;
    let conn = StarConnection::connect(tls, star, addr).await?;
    let answer = tokio::time::timeout(
        STATUS_TIMEOUT,
        conn.control(&ControlRequest::Status, |_, _| {}),
    )
    .await;
    conn.close().await;
    let star = star.to_owned();
    match answer {
        Err(_) => Err(StatusError::Timeout { star }),
        Ok(Err(error)) => Err(StatusError::Stream { star, error }),
        Ok(Ok(ControlEvent::Status(status))) => Ok(status),
        Ok(Ok(ControlEvent::Failed(error))) => Err(StatusError::Refused { star, error }),
        Ok(Ok(other)) => Err(StatusError::Unexpected {
            star,
            what: format!("{other:?}"),
        }),
    }
}

/// One star's line of the report.
#[derive(Debug)]
pub struct StarReport {
    /// The star's name.
    pub name: String,
    /// Its address from the inventory.
    pub addr: String,
    /// What it said, or why it did not.
    pub result: Result<StarStatus, StatusError>,
}

/// Runs `orbitctl status` on the grid at `grid_dir`.
///
/// # Errors
///
/// [`StatusCommandError::Down`] after printing the report if any star did not answer.
pub async fn run(grid_dir: &Path, args: Args) -> Result<(), StatusCommandError> {
    let grid = Grid::open(grid_dir)?;
    let names: Vec<String> = if args.names.is_empty() {
        grid.inventory().stars.keys().cloned().collect()
    } else {
        args.names.clone()
    };
    let mut stars = Vec::with_capacity(names.len());
    for name in &names {
        stars.push((name.clone(), grid.star(name)?.clone()));
    }
    let tls = grid.client_tls()?;
    let reports = query_all(tls, stars).await;
    if args.json {
        println!("{}", report_json(&reports));
    } else {
        print!("{}", report_table(&reports));
    }
    let down: Vec<String> = reports
        .iter()
        .filter(|r| r.result.is_err())
        .map(|r| r.name.clone())
        .collect();
    if down.is_empty() {
        Ok(())
    } else {
        Err(StatusCommandError::Down {
            down,
            total: reports.len(),
        })
    }
}

/// Asks every star at once; the reports come back in the order given.
pub async fn query_all(
    tls: Arc<rustls::ClientConfig>,
    stars: Vec<(String, StarAddr)>,
) -> Vec<StarReport> {
    let mut tasks = JoinSet::new();
    for (index, (name, addr)) in stars.iter().cloned().enumerate() {
        let tls = tls.clone();
        tasks.spawn(async move { (index, query_status(tls, &name, &addr).await) });
    }
    let mut results: Vec<Option<Result<StarStatus, StatusError>>> =
        stars.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => results[index] = Some(result),
            // A query task only ends by returning; a panic is a bug worth seeing.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    stars
        .into_iter()
        .zip(results)
        .map(|((name, addr), result)| StarReport {
            name,
            addr: addr.to_string(),
            result: result.unwrap_or_else(|| unreachable!("every task reports")),
        })
        .collect()
}

/// The table: one line per star; a star that is down shows the reason after its state.
pub fn report_table(reports: &[StarReport]) -> String {
    let mut rows: Vec<Vec<String>> = vec![[
        "NAME",
        "ADDR",
        "STATE",
        "VERSION",
        "UPTIME",
        "IN FLIGHT",
        "ROOTS",
    ]
    .map(String::from)
    .to_vec()];
    for report in reports {
        let mut row = vec![report.name.clone(), report.addr.clone()];
        match &report.result {
            Ok(s) => row.extend([
                "up".to_owned(),
                s.version.clone(),
                human::uptime(s.uptime_seconds),
                (u64::from(s.transfers_in_flight) + u64::from(s.reads_in_flight)).to_string(),
                if s.roots.is_empty() {
                    "-".to_owned()
                } else {
                    s.roots.join(", ")
                },
            ]),
            Err(e) => row.extend(["down".to_owned(), e.to_string()]),
        }
        rows.push(row);
    }
    let mut out = align(&rows);
    let mut transfers: Vec<Vec<String>> = vec![["TRANSFER", "STAR", "FROM", "TO", "PROGRESS"]
        .map(String::from)
        .to_vec()];
    for report in reports {
        let Ok(status) = &report.result else { continue };
        for t in &status.transfers {
            transfers.push(vec![
                t.transfer_id.to_string(),
                report.name.clone(),
                format!("{}:{}", t.source, t.source_path),
                t.target_path.clone(),
                transfer_progress(t),
            ]);
        }
    }
    if transfers.len() > 1 {
        out.push('\n');
        out.push_str(&align(&transfers));
    }
    out
}

/// `108.0 MiB of 256.0 MiB (42%), 52.1 MiB/s, 2s`; `starting, 1s` before the size is known.
pub fn transfer_progress(t: &TransferStatus) -> String {
    let elapsed = human::uptime(t.seconds as u64);
    if t.total == 0 && t.bytes == 0 {
        return format!("starting, {elapsed}");
    }
    let percent = t
        .bytes
        .saturating_mul(100)
        .checked_div(t.total)
        .unwrap_or(100);
    format!(
        "{} of {} ({percent}%), {}, {elapsed}",
        human::bytes(t.bytes),
        human::bytes(t.total),
        human::rate(t.bytes, t.seconds)
    )
}

/// Rows as columns two spaces apart. A column's width counts only the cells that are not the
/// last of their row, so a long last cell (a reason, a list of roots) does not widen the rest.
/// Every cell is made [`human::printable`]: most come from the stars.
fn align(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|cell| human::printable(cell).into_owned())
                .collect()
        })
        .collect();
    let mut widths = vec![0usize; rows.iter().map(Vec::len).max().unwrap_or(0)];
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(row.len() - 1) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let last = row.len() - 1;
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

#[derive(Serialize)]
#[serde(untagged)]
enum StarJson<'a> {
    Up {
        name: &'a str,
        addr: &'a str,
        up: bool,
        version: &'a str,
        protocol: u32,
        uptime_seconds: u64,
        roots: &'a [String],
        transfers_in_flight: u32,
        reads_in_flight: u32,
        transfers: Vec<TransferJson<'a>>,
    },
    Down {
        name: &'a str,
        addr: &'a str,
        up: bool,
        code: &'static str,
        retryable: bool,
        error: String,
    },
}

#[derive(Serialize)]
struct TransferJson<'a> {
    transfer_id: String,
    source: &'a str,
    source_path: &'a str,
    target_path: &'a str,
    bytes: u64,
    total: u64,
    seconds: f64,
}

#[derive(Serialize)]
struct ReportJson<'a> {
    stars: Vec<StarJson<'a>>,
}

/// The `--json` object: `{"type":"status","stars":[...]}`, on one line.
pub fn report_json(reports: &[StarReport]) -> String {
    let stars = reports
        .iter()
        .map(|r| match &r.result {
            Ok(s) => StarJson::Up {
                name: &r.name,
                addr: &r.addr,
                up: true,
                version: &s.version,
                protocol: s.protocol,
                uptime_seconds: s.uptime_seconds,
                roots: &s.roots,
                transfers_in_flight: s.transfers_in_flight,
                reads_in_flight: s.reads_in_flight,
                transfers: s
                    .transfers
                    .iter()
                    .map(|t| TransferJson {
                        transfer_id: t.transfer_id.to_string(),
                        source: &t.source,
                        source_path: &t.source_path,
                        target_path: &t.target_path,
                        bytes: t.bytes,
                        total: t.total,
                        seconds: t.seconds,
                    })
                    .collect(),
            },
            Err(e) => StarJson::Down {
                name: &r.name,
                addr: &r.addr,
                up: false,
                code: e.code().name(),
                retryable: crate::exit::retryable(e.code()),
                error: e.to_string(),
            },
        })
        .collect();
    crate::json::line(crate::json::STATUS, &ReportJson { stars })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_star::FakeStar;
    use orbit_wire::TransferId;

    fn status(name: &str) -> StarStatus {
        StarStatus {
            name: name.into(),
            version: "0.1.0".into(),
            protocol: 1,
            uptime_seconds: 192,
            roots: vec!["/srv/data".into(), "/srv/backup".into()],
            transfers_in_flight: 1,
            reads_in_flight: 2,
            transfers: vec![TransferStatus {
                transfer_id: TransferId(0xabc),
                source: "star-b".into(),
                source_path: "/srv/data/f.bin".into(),
                target_path: "/srv/backup/f.bin".into(),
                bytes: 64 << 20,
                total: 256 << 20,
                seconds: 2.0,
            }],
        }
    }

    #[tokio::test]
    async fn up_and_down_stars_are_reported_in_order() {
        let star =
            FakeStar::spawn("star-a", |_| vec![ControlEvent::Status(status("star-a"))]).await;
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Something that refuses outright: a star of this grid that answers with a failure.
        let refusing = FakeStar::spawn("star-c", |_| {
            vec![ControlEvent::Failed(WireError::new(
                ErrorCode::Unavailable,
                "shutting down",
            ))]
        })
        .await;
        let addr = |a: std::net::SocketAddr| StarAddr::parse(&a.to_string()).unwrap();

        let reports = query_all(
            star.controller_tls(),
            vec![("star-a".into(), addr(star.addr))],
        )
        .await;
        assert_eq!(reports[0].result.as_ref().unwrap(), &status("star-a"));

        let refused = query_all(
            refusing.controller_tls(),
            vec![("star-c".into(), addr(refusing.addr))],
        )
        .await;
        let err = refused[0].result.as_ref().unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unavailable);
        assert!(err.to_string().starts_with("star-c refused"), "{err}");

        let down = StarReport {
            name: "star-b".into(),
            addr: silent.local_addr().unwrap().to_string(),
            result: Err(StatusError::Timeout {
                star: "star-b".into(),
            }),
        };
        let all = [reports.into_iter().next().unwrap(), down];
        let table = report_table(&all);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME    ADDR"), "{table}");
        assert!(lines[0].ends_with("IN FLIGHT  ROOTS"), "{table}");
        assert!(lines[1].contains("  up  "), "{table}");
        assert!(lines[1].contains("3m 12s"), "{table}");
        assert!(lines[1].ends_with("/srv/data, /srv/backup"), "{table}");
        assert!(lines[2].contains(" down   star-b: no status"), "{table}");
        assert_eq!(lines[3], "", "{table}");
        assert!(
            lines[4].starts_with("TRANSFER          STAR    FROM"),
            "{table}"
        );
        assert_eq!(
            lines[5],
            "0000000000000abc  star-a  star-b:/srv/data/f.bin  /srv/backup/f.bin  \
             64.0 MiB of 256.0 MiB (25%), 32.0 MiB/s, 2s"
        );

        let json: serde_json::Value = serde_json::from_str(&report_json(&all)).unwrap();
        assert_eq!(json["type"], "status");
        let stars = json["stars"].as_array().unwrap();
        assert_eq!(stars[0]["name"], "star-a");
        assert_eq!(stars[0]["up"], true);
        assert_eq!(stars[0]["uptime_seconds"], 192);
        assert_eq!(stars[0]["transfers_in_flight"], 1);
        assert_eq!(stars[0]["roots"][1], "/srv/backup");
        assert_eq!(stars[0]["transfers"][0]["transfer_id"], "0000000000000abc");
        assert_eq!(stars[0]["transfers"][0]["bytes"], 64 << 20);
        assert_eq!(stars[1]["up"], false);
        assert_eq!(stars[1]["code"], "DeadlineExceeded");
        assert_eq!(stars[1]["retryable"], true);
        assert!(stars[1]["error"].as_str().unwrap().starts_with("star-b"));
    }
}
