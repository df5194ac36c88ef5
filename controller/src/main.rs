//! `orbitctl`: the command line of the Orbit controller. Thin on purpose: parse the arguments,
//! set up logging, run the subcommand from the library, and turn its result into one line on
//! stderr and an exit code from the one table in `orbit_controller::exit` (shown by `--help`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory as _, Parser, Subcommand};
use orbit_controller::{
    add_star, cancel, demo, exit, human, init, manual, renew, replicate, revoke, rotate_keys,
    status, token, wait, VERSION,
};
use tracing_subscriber::EnvFilter;

/// Orbit's controller: make a grid of stars, and have stars copy files directly between them.
///
/// A grid is a folder made by `orbitctl init`: its inventory (grid.toml), its certificate
/// authority, the controller's certificate and the master token key. Point the other commands at
/// it with --grid or ORBIT_GRID. Try `orbitctl demo` to see one replication on this machine.
#[derive(Debug, Parser)]
#[command(name = "orbitctl", version = VERSION, after_help = exit::TABLE)]
struct Cli {
    /// The grid folder made by `orbitctl init` (every command but init and demo needs one).
    #[arg(long, global = true, env = "ORBIT_GRID", value_name = "GRID")]
    grid: Option<PathBuf>,

    /// Log more on stderr: -v for info, -vv for debug, -vvv for trace. RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Init(init::Args),
    AddStar(add_star::Args),
    Replicate(Box<replicate::Args>),
    Status(status::Args),
    Token(token::Args),
    Demo(demo::Args),
    RotateKeys(rotate_keys::Args),
    Revoke(revoke::Args),
    Renew(renew::Args),
    Wait(wait::Args),
    Cancel(cancel::Args),
    Completions(manual::CompletionsArgs),
    Man(manual::ManArgs),
}

fn main() -> ExitCode {
    // orbitctl reads the grid's CA key and token master key: neither may reach a core dump, nor
    // another process of the same user through /proc or ptrace.
    if let Err(e) = orbit_certs::forbid_core_dumps() {
        eprintln!("orbitctl: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("orbitctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for stray blocking work (a file being hashed) once the answer is known.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The reason may quote a star's words; a hostile star's escape sequences stay inert
            // (line breaks are kept: some reasons are several lines).
            let text = format!("{e:#}");
            let lines: Vec<_> = text.lines().map(human::printable).collect();
            eprintln!("orbitctl: {}", lines.join("\n"));
            exit_code(&e)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let grid = cli.grid;
    match cli.command {
        Command::Init(args) => Ok(init::run(args)?),
        Command::AddStar(args) => Ok(add_star::run(&need_grid(grid), args)?),
        Command::Replicate(args) => Ok(replicate::run(&need_grid(grid), *args).await?),
        Command::Status(args) => Ok(status::run(&need_grid(grid), args).await?),
        Command::Token(args) => Ok(token::run(&need_grid(grid), args)?),
        Command::Demo(args) => demo::run(args).await,
        Command::RotateKeys(args) => Ok(rotate_keys::run(&need_grid(grid), args)?),
        Command::Revoke(args) => Ok(revoke::run(&need_grid(grid), args)?),
        Command::Renew(args) => Ok(renew::run(&need_grid(grid), args).await?),
        Command::Wait(args) => Ok(wait::run(&need_grid(grid), args).await?),
        Command::Cancel(args) => Ok(cancel::run(&need_grid(grid), args).await?),
        Command::Completions(args) => {
            manual::completions(Cli::command(), &args);
            Ok(())
        }
        Command::Man(args) => {
            for path in manual::man(Cli::command(), &args)? {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}

/// The exit code `e` calls for (the table in [`exit`]): `replicate`, `wait`, `cancel` and
/// `renew --finish` tell their failures apart; every other command's failure is 1 (`status`: some star did not
/// answer).
fn exit_code(e: &anyhow::Error) -> ExitCode {
    let code = if let Some(e) = e.downcast_ref::<replicate::ReplicateError>() {
        e.exit_code()
    } else if let Some(e) = e.downcast_ref::<wait::WaitError>() {
        e.exit_code()
    } else if let Some(e) = e.downcast_ref::<cancel::CancelError>() {
        e.exit_code()
    } else if let Some(e) = e.downcast_ref::<renew::RenewError>() {
        e.exit_code()
    } else {
        exit::FAILED
    };
    ExitCode::from(code)
}

/// The grid from --grid or ORBIT_GRID, or a usage error (exit code 2).
fn need_grid(grid: Option<PathBuf>) -> PathBuf {
    grid.unwrap_or_else(|| {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "this command needs a grid: pass --grid GRID or set ORBIT_GRID",
            )
            .exit()
    })
}

fn init_tracing(verbose: u8) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        })
    });
    // Colour only for a person at a terminal: never in a file, a pipe or the journal.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}
