//! The command line: parse, load, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use referral_router::app::App;
use referral_router::cli::{self, explain, fixtures, templates};
use referral_router::config::Settings;
use referral_router::decode;
use referral_router::route::{RuleSet, route};
use referral_router::telemetry;

#[derive(Parser)]
#[command(
    name = "referral-router",
    version,
    about = "Routes referral events to email and Action Center notifications"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker: consume events, route, render, send.
    Run {
        /// A TOML file overriding the embedded defaults (`ROUTER__*` variables override both).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Publish example events (`.json`, `.jsonl`) to the broker, to try the worker locally.
    Publish {
        /// Event files, published in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The dead-letter queue: list what is there and why, or replay it.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Digests of held leads.
    Digest {
        #[command(subcommand)]
        command: DigestCommand,
    },
    /// Why did (or didn't) someone get something: the notification log.
    Log {
        /// Every planned delivery of this event.
        #[arg(long, conflicts_with = "recipient", required_unless_present = "recipient")]
        event: Option<String>,
        /// Everything planned for this email address, newest first.
        #[arg(long)]
        recipient: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Route files of events in order, state carried across them, sending
    /// nothing; with --against, through two rule sets, and print the difference
    /// (exit 0: none, 1: some, 2: error).
    Replay {
        /// Event files: `.json` (one event) or `.jsonl` (one per line), replayed in order.
        files: Vec<PathBuf>,
        /// The rules to replay through (the change, when comparing); default: the serving ones (`rules.dir`).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Default: the serving ones (`templates.dir`).
        #[arg(long)]
        templates: Option<PathBuf>,
        /// The base rules to compare with (what is deployed).
        #[arg(long)]
        against: Option<PathBuf>,
        /// The base templates (default: --templates).
        #[arg(long, requires = "against")]
        against_templates: Option<PathBuf>,
        /// `directory.*` events, one per line, applied before the first event.
        #[arg(long)]
        directory: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Replay the store's event archive instead of files (see `archive.retention`).
        #[arg(long, conflicts_with = "files")]
        from_store: bool,
        /// With --from-store: events received since then (`7d`, or an RFC 3339 time).
        #[arg(long, requires = "from_store", default_value = "7d")]
        since: String,
        /// With --from-store: events received before then (default: now).
        #[arg(long, requires = "from_store")]
        until: Option<String>,
        /// With --from-store: only these event types (`lead.*`); repeatable. Directory events always come.
        #[arg(long = "type", requires = "from_store")]
        types: Vec<String>,
        /// With --from-store: the worker's settings (to find the store).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check or test the routing rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Show who an event would reach, and why each rule did or did not act.
    Explain {
        /// A CloudEvent (structured JSON).
        event: PathBuf,
        /// `directory.*` events, one per line.
        #[arg(long)]
        directory: Option<PathBuf>,
        /// The rules directory.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The status already recorded for this referral and its receivers.
        #[arg(long)]
        receiver_status: Option<String>,
        /// The status already recorded for this referral.
        #[arg(long)]
        referral_status: Option<String>,
        /// This event's position among the day's counted items (11 = the 11th lead).
        #[arg(long)]
        digest_position: Option<u32>,
    },
    /// Check the templates: every template, every example event, every locale.
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
    /// The authors' web console: previews of any notification for any example
    /// or recorded event, as the worker configured by `--config` sends it.
    Console {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to serve it (keep it on loopback: it is a tool for authors).
        #[arg(long, default_value = "127.0.0.1:8090")]
        addr: String,
        /// The rules to compare the working copy with ("what would change");
        /// default: the working copy as it was when the console started.
        #[arg(long)]
        against: Option<PathBuf>,
        /// The templates that go with --against (default: the working ones).
        #[arg(long, requires = "against")]
        against_templates: Option<PathBuf>,
    },
    /// Render one notification for one event: writes the .html, .txt and .eml.
    Preview {
        /// The notification (template) id, e.g. `cosell-incoming-opportunity`.
        notification: String,
        /// A CloudEvent (structured JSON).
        #[arg(long)]
        event: PathBuf,
        /// Render in this locale instead of the recipient's.
        #[arg(long)]
        locale: Option<String>,
        /// To this recipient (one the rules pick, or any address); default: the first the rules pick.
        #[arg(long)]
        recipient: Option<String>,
        /// The worker's configuration (sender, links, unsubscribe headers), as `run` reads it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to write the files.
        #[arg(long, default_value = "out/preview")]
        out: PathBuf,
        /// `directory.*` events, one per line, to find the real recipients.
        #[arg(long)]
        directory: Option<PathBuf>,
        #[arg(long, default_value = "templates")]
        templates: PathBuf,
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
    },
}

#[derive(Subcommand)]
enum TemplatesCommand {
    /// Load, check and render every template; errors carry file:line:column.
    Check {
        #[arg(default_value = "templates")]
        dir: PathBuf,
        /// The rules that say which events use which template (and hold the example events).
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show dead letters (they stay in the queue) with their reason and error.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Put dead letters back on the events exchange, then remove them from the queue.
    Replay {
        /// Only those dead-lettered for this reason (e.g. `retries_exhausted`).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DigestCommand {
    /// Send every held digest now, due or not. Safe beside running workers.
    Flush {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Load and validate the rules; errors carry file:line:column.
    Check {
        #[arg(default_value = "rules")]
        dir: PathBuf,
        /// The templates the rules name must exist here.
        #[arg(long, default_value = "templates")]
        templates: PathBuf,
    },
    /// Run the fixtures under DIR/tests and list rules no fixture exercises.
    Test {
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => worker(config),
        Command::Dlq { command } => dlq(command),
        Command::Digest {
            command: DigestCommand::Flush { config },
        } => digest_flush(config),
        Command::Log {
            event,
            recipient,
            json,
            config,
        } => log(event, recipient, json, config),
        Command::Publish { files, config } => {
            let settings = Settings::load(config.as_deref())?;
            let n = runtime()?
                .block_on(cli::publish::run(&settings.amqp, &files))
                .map_err(anyhow::Error::msg)?;
            println!("published {n} event(s) to {}", settings.amqp.exchange);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules {
            command: RulesCommand::Check { dir, templates },
        } => report(cli::rules_check(&dir, &templates)),
        Command::Rules {
            command: RulesCommand::Test { dir },
        } => {
            let report = fixtures::run(&dir).map_err(anyhow::Error::msg)?;
            print!("{}", report.text);
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Console {
            config,
            addr,
            against,
            against_templates,
        } => {
            let settings = Settings::load(config.as_deref())?;
            let against = against.map(|rules| {
                let templates = against_templates.unwrap_or_else(|| settings.templates.dir.clone());
                (rules, templates)
            });
            match runtime()?.block_on(cli::console::serve(&settings, &addr, against)) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Templates {
            command: TemplatesCommand::Check { dir, rules },
        } => report(templates::check(&dir, &rules)),
        Command::Preview {
            notification,
            event,
            locale,
            recipient,
            config,
            out,
            directory,
            templates: templates_dir,
            rules,
        } => {
            let settings = Settings::load(config.as_deref())?;
            report(templates::preview(&templates::PreviewRequest {
                notification: &notification,
                event: &event,
                recipient: recipient.as_deref(),
                locale: locale.as_deref(),
                out: &out,
                directory: directory.as_deref(),
                templates: &templates_dir,
                rules: &rules,
                settings: &settings,
            }))
        }
        Command::Explain { .. } => explain(cli.command),
        Command::Replay { .. } => Ok(replay(cli.command)),
    }
}

/// `replay`: exit 0 (no difference), 1 (a difference), 2 (an error).
fn replay(command: Command) -> ExitCode {
    let Command::Replay {
        files,
        rules,
        templates,
        against,
        against_templates,
        directory,
        json,
        from_store,
        since,
        until,
        types,
        config,
    } = command
    else {
        unreachable!("called for replay only");
    };
    let serving = match Settings::load(config.as_deref()) {
        Ok(s) => (s.rules.dir, s.templates.dir),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rules = rules.unwrap_or(serving.0);
    let templates = templates.unwrap_or(serving.1);
    let base_templates = against_templates.unwrap_or_else(|| templates.clone());
    let sets = cli::replay::Sets {
        rules: &rules,
        templates: &templates,
        against: against.as_deref().map(|a| (a, base_templates.as_path())),
    };
    let read = if from_store {
        archived(config.as_deref(), &since, until.as_deref(), types, directory.as_deref())
    } else if files.is_empty() {
        Err("give one or more event files (.json, .jsonl), or --from-store".into())
    } else {
        cli::replay::start_directory(directory.as_deref()).and_then(|dir| Ok((dir, cli::replay::read_inputs(&files)?)))
    };
    let outcome = read.and_then(|(dir, input)| cli::replay::run(&sets, &dir, &input, json));
    match outcome {
        Ok(report) => {
            eprint!("{}", report.notes);
            print!("{}", report.out);
            if report.differs {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

/// `run`: the worker, until SIGTERM.
fn worker(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config.as_deref())?;
    telemetry::init_logs(&settings.log);
    runtime()?.block_on(async { App::build(settings).await?.run().await })?;
    Ok(ExitCode::SUCCESS)
}

fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    let (config, limit) = match &command {
        DlqCommand::List { config, limit } | DlqCommand::Replay { config, limit, .. } => (config.clone(), *limit),
    };
    let settings = Settings::load(config.as_deref())?;
    let out = runtime()?
        .block_on(async {
            match &command {
                DlqCommand::List { .. } => cli::dlq::list(&settings.amqp, limit).await,
                DlqCommand::Replay { reason, .. } => cli::dlq::replay(&settings.amqp, reason.as_deref(), limit).await,
            }
        })
        .map_err(anyhow::Error::msg)?;
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

fn digest_flush(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config.as_deref())?;
    telemetry::init_logs(&settings.log);
    let outcome = runtime()?.block_on(async {
        let app = App::build(settings).await.map_err(|e| e.to_string())?;
        cli::ops::digest_flush(&app).await
    });
    report(outcome)
}

fn log(
    event: Option<String>,
    recipient: Option<String>,
    json: bool,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config.as_deref())?;
    let query = match (event, recipient) {
        (Some(id), _) => cli::ops::LogQuery::Event(id),
        (None, Some(email)) => cli::ops::LogQuery::Recipient(email),
        (None, None) => anyhow::bail!("give --event ID or --recipient EMAIL"),
    };
    let (text, rows) = runtime()?
        .block_on(async {
            let app = App::build(settings).await.map_err(|e| e.to_string())?;
            cli::ops::log(&app, &query).await
        })
        .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).context("printing the log")?);
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

fn explain(command: Command) -> anyhow::Result<ExitCode> {
    let Command::Explain {
        event,
        directory,
        rules,
        json,
        receiver_status,
        referral_status,
        digest_position,
    } = command
    else {
        unreachable!("called for explain only");
    };
    let rules = RuleSet::load_dir(&rules).map_err(|e| anyhow::anyhow!("{e}"))?;
    let event = decode::read_event(&event).map_err(anyhow::Error::msg)?;
    let dir = match directory {
        Some(path) => decode::read_directory(&path).map_err(anyhow::Error::msg)?,
        None => Default::default(),
    };
    let state = cli::seeded_state(
        &event,
        &rules,
        &dir,
        receiver_status.as_deref(),
        referral_status.as_deref(),
        digest_position,
    );
    let plan = route(&event, &rules, &dir, &state);
    if json {
        let out = explain::to_json(&event, &rules, &plan);
        println!("{}", serde_json::to_string_pretty(&out).context("printing the plan")?);
    } else {
        print!("{}", explain::to_text(&event, &rules, &plan));
    }
    Ok(ExitCode::SUCCESS)
}

/// The archive's events for `replay --from-store`, and the directory as of the first.
fn archived(
    config: Option<&std::path::Path>,
    since: &str,
    until: Option<&str>,
    types: Vec<String>,
    directory: Option<&std::path::Path>,
) -> Result<(referral_router::directory::Directory, cli::replay::Input), String> {
    let settings = Settings::load(config).map_err(|e| e.to_string())?;
    let now = chrono::Utc::now();
    let window = cli::replay::Window {
        since: cli::replay::parse_time(since, now)?,
        until: until.map_or(Ok(now), |u| cli::replay::parse_time(u, now))?,
        types,
    };
    runtime().map_err(|e| e.to_string())?.block_on(async {
        let store = referral_router::store::connect(&settings.store, &settings.archive)
            .await
            .map_err(|e| e.to_string())?;
        cli::replay::from_store(&*store, &window, directory).await
    })
}

/// Prints a tool's report: the text on success, the errors on failure.
fn report(result: Result<String, String>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(text) => {
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}
