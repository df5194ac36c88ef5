//! `orbit-star`: runs one Orbit star until SIGTERM or SIGINT. Reads `star.toml`, applies flags
//! over it, starts the star and waits for a signal; everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use tracing::info;

use orbit_agent::config::{StarFile, AUTH_SECRET_ENV};
use orbit_agent::Star;

/// Runs an Orbit star: serves files under its allowed roots to other stars of the grid, and pulls
/// files from them into its roots when the grid's controller says so.
///
/// Typical use, with the files `orbitctl init` wrote for this star:
///
///     orbit-star --config GRID/stars/star-a/star.toml --allow /srv/data
///
/// Flags override the settings of the config file. The star logs "listening on ADDR" once it is
/// ready, and stops cleanly on SIGTERM or SIGINT. On SIGHUP it rereads its config and key files
/// and applies new token keys, certificates and revocation list without a restart, closing
/// connections whose certificate is now revoked.
#[derive(Debug, Parser)]
#[command(version = concat!(env!("CARGO_PKG_VERSION"), " (wire protocol orbit/1)"), verbatim_doc_comment)]
struct Args {
    /// The star's config file, star.toml, as written by `orbitctl init` or `orbitctl add-star`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A directory to serve from and store into; repeat for several. Replaces the file's `allow`.
    #[arg(long, value_name = "DIR")]
    allow: Vec<PathBuf>,
    /// The star's name; its certificate must carry the same name.
    #[arg(long)]
    name: Option<String>,
    /// The UDP address to listen on, e.g. 0.0.0.0:7401; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// This star's certificate (PEM).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// This star's private key (PEM).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The grid CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// File holding this star's token key. Without it, ORBIT_AUTH_SECRET or the config file's
    /// token_key_file is used.
    #[arg(long, value_name = "FILE")]
    token_key_file: Option<PathBuf>,
    /// Directory for the star's state.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// File holding this star's token key before the last rotation, still accepted until the
    /// next one (see docs/KEYS.md).
    #[arg(long, value_name = "FILE")]
    previous_token_key_file: Option<PathBuf>,
    /// The grid's certificate revocation list (PEM), written by `orbitctl revoke`; reread on
    /// SIGHUP.
    #[arg(long, value_name = "FILE")]
    crl_file: Option<PathBuf>,
    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orbit-star: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => StarFile::load(path)?,
        None => StarFile::default(),
    };
    let flags = StarFile {
        name: args.name,
        listen: args.listen,
        cert: args.cert,
        key: args.key,
        ca: args.ca,
        token_key_file: args.token_key_file,
        state_dir: args.state_dir,
        allow: args.allow,
        previous_token_key_file: args.previous_token_key_file,
        crl_file: args.crl_file,
    };
    // Precedence: --token-key-file, then ORBIT_AUTH_SECRET, then the file's token_key_file.
    let secret = if flags.token_key_file.is_some() {
        None
    } else {
        std::env::var(AUTH_SECRET_ENV).ok()
    };
    let args_config = args.config.clone();
    let config = file.merge(flags.clone()).into_config(secret.clone())?;
    let name = config.name.clone();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Watched before the star starts, so that no signal finds the default action.
        let mut signals = Signals::new()?;
        let star = Star::spawn(config)
            .await
            .with_context(|| format!("star {name} cannot start"))?;
        while signals.next().await == Signal::Reload {
            // A reload that fails keeps the star running as it was.
            let result = async {
                let config = reread(args_config.as_deref(), &flags, secret.clone())?;
                star.reload(&config).await?;
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = result {
                tracing::error!("reload failed, nothing changed: {e:#}");
            }
        }
        star.shutdown().await;
        info!("bye");
        Ok(())
    })
}

/// The configuration as on SIGHUP: the config file read again, the same flags over it.
fn reread(
    config_file: Option<&std::path::Path>,
    flags: &StarFile,
    secret: Option<String>,
) -> anyhow::Result<orbit_agent::StarConfig> {
    let file = match config_file {
        Some(path) => StarFile::load(path)?,
        None => StarFile::default(),
    };
    Ok(file.merge(flags.clone()).into_config(secret)?)
}

#[derive(Debug, PartialEq, Eq)]
enum Signal {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => { info!("SIGTERM received"); Signal::Stop }
            _ = self.int.recv() => { info!("SIGINT received"); Signal::Stop }
            _ = self.hup.recv() => { info!("SIGHUP received: reloading"); Signal::Reload }
        }
    }
}
