//! `orbitctl status`: asks stars, all at once, whether they are up and what they are doing, and
//! prints a table or JSON.
//!
//! Each star gets its own connection and its own bounded wait, so one star that is down never
//! delays the report on the others beyond [`connect::CONNECT_TIMEOUT`].
//!
//! It also shows when each star's certificate expires, read from the certificate the star
//! presented in the handshake (what it really runs with, not what the grid holds), and when
//! the grid CA's does, and warns of any within [`orbit_certs::EXPIRY_WARNING`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, StarStatus, TransferStatus, WireError};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::connect::{self, ConnectError, StarConnection, StreamError};
use crate::grid::{Grid, GridError};
use crate::human;
use crate::spec::StarAddr;

/// How long a connected star has to answer a status request.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// Ask stars whether they are up: version, uptime, transfers in flight, certificate expiry and
/// roots; then list the transfers in flight with their progress.
///
/// A star certificate or the grid CA's that expires within 30 days is marked RENEW and
/// warned of below the table (renew stars with `orbitctl renew`).
///
/// Exits 0 if every star asked answered, 1 otherwise (with --json, each star that did not says
/// why in "code" and "error").
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stars to ask. Default: every star in grid.toml.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,

    /// Print one JSON object instead of a table: {"type":"status","ca_not_after":..,
    /// "ca_expires_soon":..,"stars":[..]}, each star with "up" and either its status (with
    /// "cert_not_after" and "cert_expires_soon") or "code", "retryable" and "error"; times in
    /// Unix seconds, "expires_soon" true within 30 days.
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

/// Asks the star `star` at `addr` for its status; also when the certificate it presented
/// expires.
///
/// # Errors
///
/// [`StatusError`] naming the star.
pub async fn query_status(
    tls: Arc<rustls::ClientConfig>,
    star: &str,
    addr: &StarAddr,
) -> Result<(StarStatus, Option<SystemTime>), StatusError> {
    let addr = connect::resolve(star, addr).await?;
    let conn = StarConnection::connect(tls, star, addr).await?;
    let not_after = conn
        .peer_certificate()
        .and_then(|cert| orbit_certs::not_after_of(&cert).ok());
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
        Ok(Ok(ControlEvent::Status(status))) => Ok((status, not_after)),
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
    /// When the certificate it presented expires, if it answered.
    pub cert_not_after: Option<SystemTime>,
}

/// When the grid CA's certificate (in `GRID/ca.pem`) expires.
///
/// # Errors
///
/// [`GridError`] if it cannot be read.
pub fn ca_not_after(grid_dir: &Path) -> Result<SystemTime, GridError> {
    let path = grid_dir.join(crate::layout::CA_CERT);
    let pem = std::fs::read_to_string(&path).map_err(|error| GridError::Read {
        path: path.clone(),
        error,
    })?;
    let invalid = |message: String| GridError::Invalid {
        path: path.clone(),
        message,
    };
    let certs = orbit_certs::load_certs(&pem).map_err(|e| invalid(e.to_string()))?;
    let cert = certs
        .first()
        .ok_or_else(|| invalid("holds no certificate".into()))?;
    orbit_certs::not_after_of(cert).map_err(|e| invalid(e.to_string()))
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
    let ca = ca_not_after(grid_dir)?;
    let reports = query_all(tls, stars).await;
    let now = SystemTime::now();
    if args.json {
        println!("{}", report_json(&reports, ca, now));
    } else {
        print!("{}", report_table(&reports, ca, now));
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

/// A star's status and when the certificate it presented expires, or why it gave none.
type Answer = Result<(StarStatus, Option<SystemTime>), StatusError>;

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
    let mut results: Vec<Option<Answer>> = stars.iter().map(|_| None).collect();
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
        .map(|((name, addr), result)| {
            let result = result.unwrap_or_else(|| unreachable!("every task reports"));
            let (result, cert_not_after) = match result {
                Ok((status, not_after)) => (Ok(status), not_after),
                Err(e) => (Err(e), None),
            };
            StarReport {
                name,
                addr: addr.to_string(),
                result,
                cert_not_after,
            }
        })
        .collect()
}

/// A certificate's expiry for the table: `2029-12-04 (1825 days)`, marked `RENEW` within
/// [`orbit_certs::EXPIRY_WARNING`] and `EXPIRED` after.
pub fn expiry_cell(not_after: SystemTime, now: SystemTime) -> String {
    let date = &orbit_certs::expiry_text(not_after)[..10];
    let days = orbit_certs::days_left(not_after, now);
    if days < 0 {
        format!("{date} EXPIRED")
    } else if orbit_certs::expires_soon(not_after, now) {
        format!("{date} ({days} days) RENEW")
    } else {
        format!("{date} ({days} days)")
    }
}

/// The warning lines under the table, one per certificate that expires soon.
fn expiry_warnings(reports: &[StarReport], ca: SystemTime, now: SystemTime) -> String {
    let when = |not_after: SystemTime| {
        let days = orbit_certs::days_left(not_after, now);
        let date = orbit_certs::expiry_text(not_after);
        if days < 0 {
            format!("expired on {date}")
        } else {
            format!("expires on {date}, in {days} days")
        }
    };
    let mut out = String::new();
    for report in reports {
        let Some(not_after) = report.cert_not_after else {
            continue;
        };
        if orbit_certs::expires_soon(not_after, now) {
            out.push_str(&format!(
                "warning: {}'s certificate {}: renew it with `orbitctl renew {}`\n",
                report.name,
                when(not_after),
                report.name
            ));
        }
    }
    if orbit_certs::expires_soon(ca, now) {
        out.push_str(&format!(
            "warning: the grid CA's certificate {}: every certificate of the grid stops being \
             valid with it (see \"The grid CA\" in docs/KEYS.md)\n",
            when(ca)
        ));
    }
    out
}

/// The table: one line per star; a star that is down shows the reason after its state. Then
/// the grid CA's expiry, the transfers in flight, and a warning for every certificate that
/// expires soon.
pub fn report_table(reports: &[StarReport], ca: SystemTime, now: SystemTime) -> String {
    let mut rows: Vec<Vec<String>> = vec![[
        "NAME",
        "ADDR",
        "STATE",
        "VERSION",
        "UPTIME",
        "IN FLIGHT",
        "CERT EXPIRES",
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
                report
                    .cert_not_after
                    .map_or_else(|| "-".to_owned(), |t| expiry_cell(t, now)),
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
    out.push_str(&format!("grid CA expires {}\n", expiry_cell(ca, now)));
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
    let warnings = expiry_warnings(reports, ca, now);
    if !warnings.is_empty() {
        out.push('\n');
        out.push_str(&warnings);
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
        cert_not_after: Option<u64>,
        cert_expires_soon: bool,
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
    ca_not_after: u64,
    ca_expires_soon: bool,
    stars: Vec<StarJson<'a>>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `--json` object: `{"type":"status","ca_not_after":..,"ca_expires_soon":..,
/// "stars":[...]}`, on one line.
pub fn report_json(reports: &[StarReport], ca: SystemTime, now: SystemTime) -> String {
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
                cert_not_after: r.cert_not_after.map(unix),
                cert_expires_soon: r
                    .cert_not_after
                    .is_some_and(|t| orbit_certs::expires_soon(t, now)),
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
    let report = ReportJson {
        ca_not_after: unix(ca),
        ca_expires_soon: orbit_certs::expires_soon(ca, now),
        stars,
    };
    crate::json::line(crate::json::STATUS, &report)
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
        // The fake star's certificate is a standard one: about three years.
        let now = SystemTime::now();
        let cert = reports[0]
            .cert_not_after
            .expect("the handshake's certificate");
        assert!((1094..=1096).contains(&orbit_certs::days_left(cert, now)));

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
            cert_not_after: None,
        };
        let day = Duration::from_secs(86_400);
        let ca = now + 3650 * day;
        let all = [reports.into_iter().next().unwrap(), down];
        let table = report_table(&all, ca, now);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME    ADDR"), "{table}");
        assert!(lines[0].contains("IN FLIGHT  CERT EXPIRES  "), "{table}");
        assert!(lines[0].ends_with("  ROOTS"), "{table}");
        assert!(lines[1].contains("  up  "), "{table}");
        assert!(lines[1].contains("3m 12s"), "{table}");
        assert!(lines[1].contains(" days)  "), "{table}");
        assert!(!lines[1].contains("RENEW"), "{table}");
        assert!(lines[1].ends_with("/srv/data, /srv/backup"), "{table}");
        assert!(lines[2].contains(" down   star-b: no status"), "{table}");
        assert!(lines[3].starts_with("grid CA expires "), "{table}");
        assert!(lines[3].ends_with("(3650 days)"), "{table}");
        assert_eq!(lines[4], "", "{table}");
        assert!(
            lines[5].starts_with("TRANSFER          STAR    FROM"),
            "{table}"
        );
        assert!(!table.contains("warning"), "{table}");
        assert_eq!(
            lines[6],
            "0000000000000abc  star-a  star-b:/srv/data/f.bin  /srv/backup/f.bin  \
             64.0 MiB of 256.0 MiB (25%), 32.0 MiB/s, 2s"
        );

        let json: serde_json::Value = serde_json::from_str(&report_json(&all, ca, now)).unwrap();
        assert_eq!(json["type"], "status");
        assert_eq!(json["ca_expires_soon"], false);
        assert_eq!(
            json["ca_not_after"],
            ca.duration_since(UNIX_EPOCH).unwrap().as_secs()
        );
        assert_eq!(stars_of(&json)[0]["cert_expires_soon"], false);
        assert_eq!(
            stars_of(&json)[0]["cert_not_after"],
            cert.duration_since(UNIX_EPOCH).unwrap().as_secs()
        );
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

        // Within thirty days: marked and warned of, the CA's too.
        let mut soon = all;
        soon[0].cert_not_after = Some(now + 10 * day + day / 2);
        let ca = now + 20 * day + day / 2;
        let table = report_table(&soon, ca, now);
        assert!(table.contains("(10 days) RENEW"), "{table}");
        assert!(
            table.contains("warning: star-a's certificate expires on ")
                && table.contains(", in 10 days: renew it with `orbitctl renew star-a`"),
            "{table}"
        );
        assert!(
            table.contains("warning: the grid CA's certificate expires on "),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&report_json(&soon, ca, now)).unwrap();
        assert_eq!(json["ca_expires_soon"], true);
        assert_eq!(stars_of(&json)[0]["cert_expires_soon"], true);
        soon[0].cert_not_after = Some(now - day);
        assert!(report_table(&soon, ca, now).contains(" EXPIRED "));
    }

    fn stars_of(json: &serde_json::Value) -> &Vec<serde_json::Value> {
        json["stars"].as_array().unwrap()
    }
}
