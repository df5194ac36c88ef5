//! `orbit-star`: runs one Orbit star until SIGTERM or SIGINT. Reads `star.toml`, applies the
//! `ORBIT_*` environment and the flags over it, starts the star, tells systemd when it is ready
//! and waits for a signal; everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, Parser};
use tracing::{info, warn};

use orbit_agent::config::{LogFormat, Origin, StarFile, AUTH_SECRET_ENV, CREDENTIALS_ENV};
use orbit_agent::log_output::{JournalPriority, Stderr};
use orbit_agent::{notify, Star};

/// Runs an Orbit star: serves files under its allowed roots to other stars of the grid, and pulls
/// files from them into its roots when the grid's controller says so.
///
/// Typical use, with the files `orbitctl init` wrote for this star:
///
///     orbit-star --config GRID/stars/star-a/star.toml --allow /srv/data
///
/// Every setting is a flag, an ORBIT_* environment variable (shown below) and a key of
/// star.toml (the flag's name with `_` for `-`). Precedence: flag, then environment, then file,
/// then default. The star logs "listening on ADDR" once it is ready, notifies systemd
/// (Type=notify) and stops cleanly on SIGTERM or SIGINT. On SIGHUP it rereads its config and key
/// files and applies new token keys, certificates and revocation list without a restart,
/// closing connections whose certificate is now revoked.
#[derive(Debug, Parser)]
#[command(name = "orbit-star", version = orbit_agent::VERSION, verbatim_doc_comment)]
struct Args {
    /// The star's config file, star.toml, as written by `orbitctl init` or `orbitctl add-star`.
    #[arg(long, env = "ORBIT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration (files, keys, certificate, roots), print the effective settings
    /// with secrets masked, and exit: 0 if it is usable.
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    settings: StarFile,
}

fn main() -> ExitCode {
    // Before any key is read: a core dump, or another process of the same user reading this
    // one's memory through /proc or ptrace, would expose the private key and token keys.
    if let Err(e) = orbit_certs::forbid_core_dumps() {
        eprintln!("orbit-star: {e:#}");
        return ExitCode::FAILURE;
    }
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    match run(args, &matches) {
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
    let stderr = Stderr::detect();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(stderr == Stderr::Terminal);
    match (format, stderr) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Human, Stderr::Journal) => {
            let plain = tracing_subscriber::fmt::format()
                .without_time()
                .with_ansi(false);
            builder.event_format(JournalPriority(plain)).init()
        }
        (LogFormat::Human, _) => builder.init(),
    }
}

fn run(args: Args, matches: &ArgMatches) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => StarFile::load(path)?,
        None => StarFile::default(),
    };
    let from_flag = |key: &str| matches.value_source(key) == Some(ValueSource::CommandLine);
    let from_env = |key: &str| matches.value_source(key) == Some(ValueSource::EnvVariable);
    let origin = |key: &str| {
        if from_flag(key) {
            Origin::Flag
        } else if from_env(key) {
            Origin::Env
        } else if file.entries().iter().any(|(k, v)| *k == key && v.is_some()) {
            Origin::File
        } else {
            Origin::Default
        }
    };
    let origins: Vec<(&str, Origin)> = StarFile::KEYS.iter().map(|k| (*k, origin(k))).collect();
    let overrides = args.settings.clone();
    let merged = file.clone().merge(args.settings);
    // The token key: --token-key-file, then ORBIT_AUTH_SECRET, then ORBIT_TOKEN_KEY_FILE, the
    // file's token_key_file, or the credentials directory.
    let secret = if from_flag("token_key_file") {
        None
    } else {
        std::env::var(AUTH_SECRET_ENV).ok()
    };
    let token_key_from = match (&secret, &merged.token_key_file) {
        (Some(_), _) => AUTH_SECRET_ENV.to_owned(),
        (None, Some(path)) => path.display().to_string(),
        (None, None) => match std::env::var_os(CREDENTIALS_ENV) {
            Some(dir) => PathBuf::from(dir).join("token.key").display().to_string(),
            None => format!("none: required (--token-key-file, {AUTH_SECRET_ENV} or ${CREDENTIALS_ENV}/token.key)"),
        },
    };
    let log_format = merged.log_format();
    let metrics_listen = merged.metrics_listen;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let credentials = std::env::var_os(CREDENTIALS_ENV).map(PathBuf::from);
    let described = merged.describe(
        |key| {
            origins
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(Origin::Default, |(_, o)| *o)
        },
        &token_key_from,
        cpus,
        credentials.as_deref(),
    );
    if args.check_config {
        print!("{described}");
    }
    let workers = merged.worker_threads(cpus)?;
    let mut config = merged.into_config(secret.clone())?;
    config.protected.extend(args.config.clone());
    if args.check_config {
        orbit_agent::check_config(&config)?;
        println!("# configuration OK");
        return Ok(());
    }

    init_logging(log_format);
    let name = config.name.clone();
    info!("{workers} worker thread(s) for the network side, {cpus} CPU(s) available");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Watched before the star says it listens: a SIGTERM that follows that line at once
        // (a supervisor, a test) must stop it cleanly, not find the default action.
        let mut signals = Signals::new()?;
        let star = Star::spawn(config)
            .await
            .with_context(|| format!("star {name} cannot start"))?;
        if let Some(addr) = metrics_listen {
            star.serve_metrics(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
        }
        // Bound, keys loaded, metrics up: tell systemd (when it is watching).
        let notifier = notify::Notifier::from_env();
        if let Err(e) = notifier.ready() {
            warn!("cannot notify systemd: {e}");
        }
        loop {
            let signal = tokio::select! {
                signal = signals.next() => signal,
                () = notify::watchdog(&star, &notifier) => Signal::Stop,
            };
            if signal == Signal::Stop {
                break;
            }
            let _ = notifier.reloading();
            // A reload that fails keeps the star running as it was.
            let result = match reread(args.config.as_deref(), &overrides, secret.clone()) {
                Ok(config) => star.reload(&config).await.map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::error!("reload failed, nothing changed: {e:#}");
            }
            let _ = notifier.ready();
        }
        let _ = notifier.stopping();
        star.shutdown().await;
        info!("bye");
        Ok(())
    })
}

/// The configuration as on SIGHUP: the config file read again, the same flags and environment
/// over it.
fn reread(
    config_file: Option<&std::path::Path>,
    overrides: &StarFile,
    secret: Option<String>,
) -> anyhow::Result<orbit_agent::StarConfig> {
    let file = match config_file {
        Some(path) => StarFile::load(path)?,
        None => StarFile::default(),
    };
    let mut config = file.merge(overrides.clone()).into_config(secret)?;
    config
        .protected
        .extend(config_file.map(std::path::Path::to_path_buf));
    Ok(config)
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
