//! The binary: parse the command line, start logging, run one command.
#![warn(clippy::unwrap_used, clippy::expect_used)]

use anyhow::Context;
use chat_actors::ids::UserId;
use chat_backend::cli::{Cli, Command};
use chat_backend::config::Config;
use chat_backend::{app, auth, shutdown, telemetry};
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match chat_backend::cli::explain(&e) {
            Some(plainer) => {
                eprintln!("error: {plainer}");
                return std::process::ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    telemetry::init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once, with its causes, and no backtrace: a wrong setting or an unreachable
            // database is the operator's to fix, not a crash to debug.
            eprintln!("error: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: drivers often repeat their cause in their own text
/// ("Connection refused (os error 111)" three times over, from Redis), so a cause whose words
/// are already there is left out.
fn report(e: &anyhow::Error) -> String {
    let mut said = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || said.contains(&text) {
            continue;
        }
        if !said.is_empty() {
            said.push_str(": ");
        }
        said.push_str(&text);
    }
    said
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Serve {
        flags: Box::default(),
    });
    let settings = match &command {
        Command::Serve { flags } => cli.settings.with((**flags).clone()),
        _ => cli.settings,
    };
    let config = Config::load(cli.config.as_deref(), settings).context("configuration")?;
    match command {
        Command::Token { user, ttl } => {
            let user = UserId::parse(&user).context("--user must be a UUID")?;
            println!("{}", auth::sign(&config, user, ttl.into())?);
            Ok(())
        }
        Command::Migrate => runtime()?.block_on(app::migrate(&config)),
        Command::Rekey => {
            let resealed = runtime()?.block_on(app::rekey(&config))?;
            println!("{resealed} message bodies re-encrypted");
            Ok(())
        }
        Command::DevUserService { file, at } => runtime()?.block_on(async move {
            let stop = CancellationToken::new();
            shutdown::on_signal(stop.clone());
            app::dev_user_service(&config, &file, &at, stop).await
        }),
        Command::Serve { .. } => runtime()?.block_on(async move {
            let listener = tokio::net::TcpListener::bind(&config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            let stop = CancellationToken::new();
            shutdown::on_signal(stop.clone());
            app::serve(config, listener, stop).await
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}
