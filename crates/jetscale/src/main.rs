//! The `jetscale` binary: parses flags, sets up logging, runs one subcommand, and turns its
//! result into an exit code. The work lives in the library.

mod cmd;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,async_nats=warn,tokio_postgres=warn")
            }),
        )
        .with_writer(std::io::stderr);
    match cli.global.log_format {
        // Fields at the top level (not under `fields`), as Vector, Loki and Elastic's
        // shippers expect; with the span list, so a line says which loop wrote it.
        cmd::LogFormat::Json => logs.json().flatten_event(true).init(),
        cmd::LogFormat::Text => logs.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let json = cli.global.log_format == cmd::LogFormat::Json;
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if json => {
            // A shipper reading one object per line would mangle a bare text line.
            tracing::error!(error = format!("{e:#}"), "stopped");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
