//! The `ferromq` command: runs the broker.

use clap::Parser;
use ferromq::{Config, Server};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// A message broker that ActiveMQ 5.x clients (OpenWire, STOMP) use unchanged.
#[derive(Parser, Debug)]
#[command(name = "ferromq", version)]
struct Cli {
    /// Configuration file (default: conf/broker.toml when it exists).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides broker.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Auto-detecting listener address, e.g. 0.0.0.0:61616 ("" disables).
    #[arg(long, value_name = "ADDR")]
    auto_addr: Option<String>,
    /// STOMP listener address, e.g. 0.0.0.0:61613 ("" disables).
    #[arg(long, value_name = "ADDR")]
    stomp_addr: Option<String>,
    /// OpenWire-only listener address (disabled unless given).
    #[arg(long, value_name = "ADDR")]
    openwire_addr: Option<String>,
    /// STOMP-over-WebSocket listener address, e.g. 0.0.0.0:61614 ("" disables).
    #[arg(long, value_name = "ADDR")]
    ws_addr: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Send messages (load tool, like `activemq producer`).
    Producer(ferromq::loadtool::ProducerArgs),
    /// Receive messages (load tool, like `activemq consumer`).
    Consumer(ferromq::loadtool::ConsumerArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    if let Some(cmd) = cli.command {
        return run_tool(cmd);
    }
    let mut config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            error!("configuration error: {e}");
            eprintln!("ferromq: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &cli.data_dir {
        config.broker.data_dir = dir.clone();
    }
    if let Some(a) = &cli.auto_addr {
        config.listeners.auto = a.clone();
    }
    if let Some(a) = &cli.stomp_addr {
        config.listeners.stomp = a.clone();
    }
    if let Some(a) = &cli.ws_addr {
        config.listeners.ws = a.clone();
    }
    if let Some(a) = &cli.openwire_addr {
        config.listeners.openwire = a.clone();
    }
    if let Err(e) = config.validate() {
        eprintln!("ferromq: configuration error: {e}");
        return ExitCode::from(2);
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(serve(config))
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("ferromq: cannot start the runtime: {e}");
            None
        }
    }
}

fn run_tool(cmd: Cmd) -> ExitCode {
    let threads = match &cmd {
        Cmd::Producer(a) => a.common.threads,
        Cmd::Consumer(a) => a.common.threads,
    };
    let built = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferromq: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (result, json) = runtime.block_on(async {
        match cmd {
            Cmd::Producer(a) => {
                let json = a.common.json;
                (ferromq::loadtool::run_producer(a).await, json)
            }
            Cmd::Consumer(a) => {
                let json = a.common.json;
                (ferromq::loadtool::run_consumer(a).await, json)
            }
        }
    });
    match result {
        Ok(summary) => {
            summary.print(json);
            if summary.errors > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("ferromq: {e}");
            ExitCode::from(2)
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, ferromq::config::ConfigError> {
    match &cli.config {
        Some(path) => Config::from_file(path),
        None => {
            let default = PathBuf::from("conf/broker.toml");
            if default.exists() {
                Config::from_file(&default)
            } else {
                Ok(Config::default())
            }
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(&config.broker.data_dir) {
        eprintln!(
            "ferromq: cannot create the data directory {}: {e}",
            config.broker.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let server = match Server::bind(&config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferromq: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Install the signal handlers before saying we started, so that a
    // SIGTERM right after start-up is a clean stop too.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferromq: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!(
        data_dir = %config.broker.data_dir.display(),
        broker = %config.broker.name,
        "ferromq {} started",
        env!("CARGO_PKG_VERSION")
    );
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        signals.wait().await;
        info!("signal received");
        signal.cancel();
    });
    server.run(shutdown).await;
    info!("stopped");
    ExitCode::SUCCESS
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
