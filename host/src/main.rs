//! The `rekon` binary: parse the command line, start telemetry, dispatch.

use clap::Parser;
use rekon_host::cli::{self, Cli, Command, LogFormat};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Cli::parse();
    init_tracing(args.log_format);
    match run(args.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check {
            plugin,
            artifact_dir,
        } => {
            print!("{}", cli::check(&plugin, artifact_dir.as_deref())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::New(args) => {
            print!("{}", cli::new(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cli::run(*args))
        }
        Command::Dev(args) => cli::dev(args),
        Command::Rbac(args) => {
            print!("{}", cli::rbac(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::ReleaseFinalizer(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(async {
                let client = cli::client(args.kubeconfig.as_deref()).await?;
                anyhow::Ok(cli::release_finalizer(&args, client).await?)
            })?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { plugin, cases } => {
            let (report, ok) = cli::test(&plugin, &cases)?;
            print!("{report}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The error and its causes, each cause added only when the message so far does not
/// already say it (many of our messages include their cause).
fn chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
    }
    text
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("REKON_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,cranelift=warn,wasmtime=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
