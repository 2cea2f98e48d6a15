//! The `pgnotifier` binary: parse the command line, set up logging, run.

use clap::Parser;
use pgnotifier_app::cli::{execute, Cli, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(with_quiet_compiler(cli.log_filter())).unwrap_or_else(|e| {
        eprintln!(
            "warning: bad log filter {:?} ({e}); using `info`",
            cli.log_filter()
        );
        EnvFilter::new("info")
    });
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Text if cli.is_demo() => logs
            .without_time()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(std::io::stdout)
            .init(),
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
    }
    match execute(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", pgnotifier_app::cli::error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The compiler's debug and trace logs are formatted per instruction: at
/// `debug`, a 12 MB component would take minutes to compile. Keep them at
/// `warn` unless the filter names them itself.
fn with_quiet_compiler(filter: &str) -> String {
    if filter.contains("cranelift") {
        filter.to_owned()
    } else {
        format!("{filter},cranelift=warn,wasmtime_cranelift=warn")
    }
}
