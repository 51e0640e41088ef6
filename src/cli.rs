//! The command line (DESIGN §6). Every listing has `--json`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Parser, Subcommand};

use crate::clock::Status;
use crate::config::{Config, LogFormat};
use crate::daemon;
use crate::duration::Dur;
use crate::store::{ClockStore, MigrationStore, QuarantineStore, Store, ThreadFilter, ThreadStore};
use crate::view::{self, text::truncate};

/// hourglass: never miss a customer's reply deadline.
#[derive(Debug, Parser)]
#[command(name = "hourglass", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "HOURGLASS_CONFIG",
        default_value = "/etc/hourglass/hourglass.toml"
    )]
    pub config: PathBuf,

    /// Log format on stderr, overriding [log] format.
    #[arg(long, global = true, value_parser = ["human", "json"])]
    pub log_format: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll every instance on its schedule, keep the clocks,
    /// send alerts and replies. SIGHUP reloads, SIGTERM stops.
    Run,
    /// Check the configuration; prints FILE:LINE:COL: message per problem
    /// and exits 2 when there is one.
    CheckConfig {
        /// Also build every connector (reads secrets, does not connect).
        #[arg(long)]
        connectors: bool,
        /// Also connect: the store, every instance's health check (a login,
        /// no poll, nothing sent to customers) and a test alert through
        /// every alert sink. One OK/FAIL line each; exits 1 on a failure.
        #[arg(long)]
        online: bool,
        /// With --online: print JSON instead of text.
        #[arg(long, requires = "online")]
        json: bool,
    },
    /// Create or upgrade the store's schema; with --to, copy this SQLite
    /// store into an empty PostgreSQL store.
    Migrate {
        /// Copy everything (threads, messages, outbox, alerts, cursors,
        /// quarantine, ...) into this empty PostgreSQL store, in one
        /// transaction; then point [store] url at it. Stop the daemon
        /// first. The password may be in PGPASSWORD instead of the URL.
        #[arg(long, value_name = "postgres://...")]
        to: Option<String>,
        /// Print JSON instead of text (a stable format for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent copy of the SQLite store to FILE, also while the
    /// daemon runs (SQLite VACUUM INTO). For PostgreSQL use pg_dump.
    Backup {
        /// The copy to write; must not exist yet.
        file: PathBuf,
    },
    /// Poll instances once and exit.
    Sync {
        /// Required: one pass (the daemon is `run`).
        #[arg(long, required = true)]
        once: bool,
        /// Only this instance.
        #[arg(long)]
        connector: Option<String>,
        /// Print JSON instead of text (a stable format for scripts).
        #[arg(long)]
        json: bool,
    },
    /// List threads by deadline.
    Threads(ThreadsArgs),
    /// Show a thread and its whole conversation.
    Show {
        id: i64,
        /// Print JSON instead of text (a stable format for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Queue a reply to a thread; the daemon sends it. Prints the outbox id.
    Reply(crate::outbox::ReplyArgs),
    /// Mark a thread: no response needed, or snoozed for a while.
    Mark {
        id: i64,
        #[arg(long, conflicts_with = "snooze", required_unless_present = "snooze")]
        no_response_needed: bool,
        /// Snooze for this long (e.g. 2h).
        #[arg(long)]
        snooze: Option<Dur>,
        /// Who marks it (recorded in the audit log).
        #[arg(long, env = "USER", default_value = "cli")]
        actor: String,
    },
    /// Take a thread (acknowledge its alert): its later alerts in this
    /// awaiting cycle are not sent, and others see who took it. ID is the
    /// thread id, as alerts show it ("Thread: #7").
    Ack {
        id: i64,
        /// Who takes it (shown to the other agents).
        #[arg(long = "as", env = "USER", default_value = "cli")]
        actor: String,
        /// Print the thread as JSON (the shape of `threads --json`).
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to
    /// stdout: `hourglass completions bash > /etc/bash_completion.d/hourglass`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `hourglass man | man -l -`.
    Man,
    /// Run the daemon on a simulated seller week: temp SQLite store, temp
    /// Maildir, alerts delivered to a local capture and printed. No config
    /// needed. Ctrl-C stops it.
    Demo {
        /// Stop after this long instead of waiting for Ctrl-C (e.g. 90s).
        #[arg(long = "for")]
        run_for: Option<Dur>,
        /// Keep the temp directory (store, Maildir, config) afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Items that could not be read (broken mail, garbage from a platform),
    /// kept with their raw bytes.
    Quarantine {
        /// Only this instance.
        #[arg(long)]
        instance: Option<String>,
        /// Write the raw bytes of this item to stdout instead of listing.
        #[arg(long, value_name = "ID")]
        raw: Option<i64>,
        /// Print JSON instead of text (a stable format for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Response times, breach rate and volume.
    Stats {
        /// Period to cover (e.g. 7d).
        #[arg(long, default_value = "7d")]
        since: Dur,
        /// Print JSON instead of text (a stable format for scripts).
        #[arg(long)]
        json: bool,
    },
    /// A report to forward to a manager: per instance, channel and agent,
    /// the customer messages, first-reply times (p50, p90), breaches, the
    /// Late Response Rate (answered after 24 h or not at all) and the
    /// busiest hours, over the last --since.
    Report {
        /// Period to cover (e.g. 30d).
        #[arg(long, default_value = "30d")]
        since: Dur,
        /// csv (one line per instance, channel and agent), json, or html
        /// (one self-contained page with charts, no external assets).
        #[arg(long, default_value = "csv", value_parser = ["csv", "json", "html"])]
        format: String,
        /// Write to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Time zone of the days and hours (IANA name, e.g. Europe/Berlin).
        #[arg(long, default_value = "UTC")]
        timezone: String,
    },
    /// The daemons sharing this store, their last heartbeats, and which
    /// instances each one polls (its leases).
    Status {
        /// Print JSON instead of text (a stable format for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Alert sinks.
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// Connector instances.
    Connectors {
        #[command(subcommand)]
        command: ConnectorsCommand,
    },
    /// One customer across channels: show one, link two, split them.
    /// A customer is named by its id (42), a thread of theirs (thread:17)
    /// or an identity (CHANNEL:HANDLE, e.g. email:ana@example.com).
    Customers {
        #[command(subcommand)]
        command: CustomersCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CustomersCommand {
    /// A customer's identities and threads on every channel.
    Show {
        customer: String,
        /// Print JSON instead of text (a stable format for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Join two customers into one (the older id stays); forgets earlier
    /// splits between them.
    Link {
        a: String,
        b: String,
        /// Who links them (recorded in the audit log).
        #[arg(long, env = "USER", default_value = "cli")]
        actor: String,
        /// Print the customer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Split identity B (thread:ID or CHANNEL:HANDLE) from A's customer
    /// into a customer of its own, or, without B, split A off from all
    /// the others. The split is recorded: automatic links never undo it.
    Unlink {
        a: String,
        b: Option<String>,
        /// Who splits them (recorded in the audit log).
        #[arg(long, env = "USER", default_value = "cli")]
        actor: String,
        /// Print the new customer as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ThreadsArgs {
    /// Only threads due within this duration (e.g. 2h); includes breached.
    #[arg(long)]
    pub due_within: Option<Dur>,
    /// Only this channel (amazon, email, ebay, ...).
    #[arg(long)]
    pub channel: Option<String>,
    /// Only this instance.
    #[arg(long)]
    pub instance: Option<String>,
    /// awaiting | breached | snoozed | answered | no_response_needed
    #[arg(long, value_parser = parse_status)]
    pub status: Option<Status>,
    /// At most this many.
    #[arg(long)]
    pub limit: Option<i64>,
    /// Print JSON instead of text (a stable format for scripts).
    #[arg(long)]
    pub json: bool,
}

fn parse_status(s: &str) -> Result<Status, String> {
    Status::parse(s).ok_or_else(|| {
        format!("unknown status {s:?}: awaiting, breached, snoozed, answered, no_response_needed")
    })
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Send one test alert through every sink and report each result.
    Test {
        /// Print JSON instead of text (a stable format for scripts).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConnectorsCommand {
    /// Configured instances, their state (ok, backoff, auth_failed, ...)
    /// and platform API calls in the last 24 h against the daily budget.
    List {
        /// Print JSON instead of text (a stable format for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Run one instance's health check; shows what the credentials grant
    /// (e.g. eBay's scopes), never a secret.
    Test { name: String },
    /// Connect an account (eBay, X, a Facebook Page): prints the consent
    /// URL to open in a browser signed in as the seller, receives the
    /// redirect on a one-shot listener, exchanges the code and keeps the
    /// token where the instance's reference says (a `file:` written 0600,
    /// else the store encrypted with [store] secret_key). Prints the
    /// scopes, the account and the expiry, never the token.
    Authorize {
        name: String,
        /// Where the one-shot listener receives the redirect
        /// (http://ADDR/oauth/callback), e.g. 127.0.0.1:8765 through an SSH
        /// tunnel (`ssh -L 8765:127.0.0.1:8765 server`). The platform's app
        /// must accept that redirect URL (eBay: the RuName's accept URL).
        /// Without it, use the Connect button of the admin page.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Print JSON instead of text (a stable format for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Show the platform's webhook for an instance (Telegram: the URL it
    /// pushes to, pending updates, its last delivery error).
    Webhook {
        name: String,
        /// Register {[http] public_url}/webhooks/NAME with the platform,
        /// with the instance's webhook secret, then show it.
        #[arg(long)]
        set: bool,
        /// Print JSON instead of text (a stable format for scripts).
        #[arg(long)]
        json: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Loads the config or prints its problems; `Err(code)` to exit with.
fn load_config(cli: &Cli) -> Result<Config, ExitCode> {
    if let Command::Connectors {
        command: ConnectorsCommand::Authorize { .. },
    } = &cli.command
    {
        crate::config::allow_missing_granted_tokens();
    }
    match Config::load(&cli.config) {
        Ok(c) => {
            let format = match cli.log_format.as_deref() {
                Some("json") => LogFormat::Json,
                Some(_) => LogFormat::Human,
                None => c.log.format,
            };
            crate::telemetry::init(format, &c.log.level);
            Ok(c)
        }
        Err(diags) => {
            eprintln!("{diags}");
            Err(ExitCode::from(2))
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // Neither needs a config.
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "hourglass", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    if let Command::Demo { run_for, keep } = &cli.command {
        crate::demo::run(run_for.map(|d| d.0), *keep).await?;
        return Ok(ExitCode::SUCCESS);
    }
    // The daemon handles SIGTERM/SIGINT/SIGHUP from its first moment, even
    // before its config is read.
    let signals = match cli.command {
        Command::Run => {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            daemon::forward_unix_signals(tx)?;
            Some(rx)
        }
        _ => None,
    };
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match &cli.command {
        Command::CheckConfig {
            connectors,
            online,
            json,
        } => {
            if *connectors || *online {
                if let Err(e) = daemon::build_instances(&config) {
                    eprintln!("{}: {e:#}", cli.config.display());
                    return Ok(ExitCode::from(2));
                }
            }
            if !*json {
                println!(
                    "{}: ok ({} instances)",
                    cli.config.display(),
                    config.instances.len()
                );
            }
            if !*online {
                return Ok(ExitCode::SUCCESS);
            }
            let checks = view::online_checks(&config).await;
            if *json {
                print_json(&checks)?;
            } else {
                print!("{}", view::text::online_checks(&checks));
            }
            Ok(if checks.iter().all(|c| c.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Backup { file } => {
            let store = connect_store(&config).await?;
            let report = store.backup_to(file).await?;
            println!(
                "Backed up {} to {} ({} bytes).",
                crate::store::sql_redact(&config.store.url),
                file.display(),
                report.bytes
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { to: Some(to), json } => {
            // Held for the copy: no daemon writes what would stay behind.
            let _lock = daemon::lock_sqlite_store(&config.store.url)
                .context("migrate --to copies a stopped store (systemctl stop hourglass)")?;
            let source = connect_store(&config).await?;
            let target = crate::store::SqlStore::connect(to, None, 2).await?;
            let report = crate::store::copy_store(&source, &target).await?;
            if *json {
                print_json(&report)?;
            } else {
                for t in &report.tables {
                    println!("{:<18} {:>9} rows", t.table, t.rows);
                }
                println!(
                    "Copied {} rows into {}. Point [store] url at it, then start the daemon.",
                    report.tables.iter().map(|t| t.rows).sum::<u64>(),
                    crate::store::sql_redact(to)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let Some(rx) = signals else {
                anyhow::bail!("signal handlers were not installed");
            };
            daemon::run(cli.config.clone(), config, rx, &crate::workers()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { to: None, json } => {
            let store = connect_store(&config).await?;
            let applied = store.migrate().await?;
            let all = store.applied_migrations().await?;
            if *json {
                print_json(&serde_json::json!({ "applied": applied, "versions": all }))?;
            } else if applied.is_empty() {
                println!(
                    "Schema up to date (version {}).",
                    all.last().copied().unwrap_or(0)
                );
            } else {
                println!("Applied migrations {applied:?}.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            once: _,
            connector,
            json,
        } => {
            let store = daemon::open_store(&config).await?;
            if let Some(name) = connector {
                if config.instance(name).is_none() {
                    eprintln!("error: no instance named {name:?} in the configuration");
                    return Ok(ExitCode::from(2));
                }
            }
            let instances = daemon::build_instances(&config)?;
            let shared: Arc<dyn Store> = store.clone();
            let connectors: Vec<_> = instances.iter().map(|i| i.connector.clone()).collect();
            crate::vault::attach(&config, &shared, &connectors)?;
            let results = daemon::sync_once(store.as_ref(), &instances, connector.as_deref()).await;
            let failed = results.iter().filter(|(_, r)| r.is_err()).count();
            if *json {
                let v: Vec<_> = results
                    .iter()
                    .map(|(name, r)| match r {
                        Ok(n) => serde_json::json!({"instance": name, "ok": true, "messages": n}),
                        Err(e) => serde_json::json!({"instance": name, "ok": false, "error": e.to_string()}),
                    })
                    .collect();
                print_json(&v)?;
            } else {
                for (name, r) in &results {
                    match r {
                        Ok(n) => println!("{name}: {n} new messages"),
                        Err(e) => println!("{name}: failed: {e}"),
                    }
                }
            }
            Ok(if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Threads(args) => {
            let store = daemon::open_store(&config).await?;
            let filter = ThreadFilter {
                due_within: args.due_within.map(|d| d.0),
                channel: args.channel.clone(),
                instance: args.instance.clone(),
                status: args.status,
                limit: args.limit,
            };
            let threads = view::threads(store.as_ref(), &filter, Utc::now()).await?;
            if args.json {
                print_json(&threads)?;
            } else {
                print!("{}", view::text::threads(&threads));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id, json } => {
            let store = daemon::open_store(&config).await?;
            let Some(detail) = view::thread(store.as_ref(), *id, Utc::now()).await? else {
                eprintln!("error: thread {id} not found");
                return Ok(ExitCode::from(1));
            };
            if *json {
                print_json(&detail)?;
            } else {
                print!("{}", view::text::thread(&detail));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reply(args) => crate::outbox::reply_command(&config, args).await,
        Command::Mark {
            id,
            no_response_needed,
            snooze,
            actor,
        } => {
            let store = daemon::open_store(&config).await?;
            let now = Utc::now();
            let detail = store
                .thread(*id, now)
                .await?
                .with_context(|| format!("Thread {id} not found"))?;
            let clocking =
                daemon::clocking_for(&config, &detail.thread.instance, &detail.thread.channel);
            if *no_response_needed {
                store
                    .mark_no_response_needed(*id, actor, &clocking, now)
                    .await?;
                println!("Thread {id} marked: no response needed.");
            } else if let Some(d) = snooze {
                let until = now + d.chrono();
                store.snooze(*id, until, actor, &clocking, now).await?;
                println!(
                    "Thread {id} snoozed until {}.",
                    until.format("%Y-%m-%d %H:%M UTC")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ack { id, actor, json } => {
            let store = daemon::open_store(&config).await?;
            let Some(thread) = view::take(store.as_ref(), *id, actor, Utc::now())
                .await
                .map_err(|e| match e {
                    crate::store::StoreError::ThreadNotFound(id) => {
                        anyhow::anyhow!("Thread {id} not found")
                    }
                    other => anyhow::Error::from(other),
                })?
            else {
                eprintln!("error: thread {id} is not awaiting a reply: there is nothing to take");
                return Ok(ExitCode::from(1));
            };
            if *json {
                print_json(&thread)?;
            } else {
                match &thread.taken_by {
                    Some(by) if by == actor => println!("Thread {id} taken by {by}."),
                    Some(by) => println!(
                        "Thread {id} was taken already by {by}{}.",
                        thread
                            .taken_at
                            .map(|t| t.format(" at %Y-%m-%d %H:%M UTC").to_string())
                            .unwrap_or_default()
                    ),
                    None => println!("Thread {id} taken."),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { .. } | Command::Completions { .. } | Command::Man => Ok(ExitCode::SUCCESS),
        Command::Quarantine {
            instance,
            raw,
            json,
        } => {
            let store = daemon::open_store(&config).await?;
            if let Some(id) = raw {
                let Some(bytes) = store.quarantine_raw(*id).await? else {
                    eprintln!("error: no quarantined item {id}");
                    return Ok(ExitCode::from(1));
                };
                use std::io::Write as _;
                std::io::stdout().write_all(&bytes)?;
                return Ok(ExitCode::SUCCESS);
            }
            let items = store.quarantine(instance.as_deref()).await?;
            if *json {
                print_json(&items)?;
            } else if items.is_empty() {
                println!("Nothing in quarantine.");
            } else {
                println!(
                    "{:>5}  {:<16}  {:<10}  {:>8}  {:<20}  ERROR",
                    "ID", "INSTANCE", "SOURCE", "BYTES", "AT"
                );
                for q in &items {
                    println!(
                        "{:>5}  {:<16}  {:<10}  {:>8}  {:<20}  {}",
                        q.id,
                        truncate(&q.instance, 16),
                        truncate(&q.source, 10),
                        q.size,
                        q.created_at.format("%Y-%m-%d %H:%M:%S"),
                        q.error
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let store = daemon::open_store(&config).await?;
            let status = daemon_status(store.as_ref(), Utc::now()).await?;
            if *json {
                print_json(&status)?;
            } else {
                print!("{}", render_status(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { since, json } => {
            let store = daemon::open_store(&config).await?;
            let now = Utc::now();
            let report = view::stats(store.as_ref(), &config, since.0, now).await?;
            if *json {
                print_json(&report)?;
            } else {
                print!("{}", crate::stats::render(&report, *since));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            since,
            format,
            output,
            timezone,
        } => {
            let tz: chrono_tz::Tz = timezone.parse().map_err(|_| {
                anyhow::anyhow!(
                    "--timezone {timezone:?} is not an IANA time zone (e.g. Europe/Berlin)"
                )
            })?;
            let store = daemon::open_store(&config).await?;
            let report = view::report(store.as_ref(), &config, since.0, tz, Utc::now()).await?;
            let text = match format.as_str() {
                "json" => format!("{}\n", serde_json::to_string_pretty(&report)?),
                "html" => crate::report::html(&report),
                _ => crate::report::csv(&report),
            };
            match output {
                Some(path) => std::fs::write(path, text)
                    .with_context(|| format!("Cannot write the report to {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Alerts {
            command: AlertsCommand::Test { json },
        } => {
            let results = crate::alerts::test_all(&config.alerts)
                .await
                .map_err(anyhow::Error::msg)?;
            let failed = results.iter().filter(|(_, r)| r.is_err()).count();
            if *json {
                let v: Vec<_> = results
                    .iter()
                    .map(|(name, r)| match r {
                        Ok(()) => serde_json::json!({"sink": name, "ok": true}),
                        Err(e) => serde_json::json!({"sink": name, "ok": false, "error": e}),
                    })
                    .collect();
                print_json(&v)?;
            } else if results.is_empty() {
                println!("No alert sinks configured.");
            } else {
                for (name, r) in &results {
                    match r {
                        Ok(()) => println!("{name}: ok"),
                        Err(e) => println!("{name}: failed: {e}"),
                    }
                }
            }
            Ok(if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Customers { command } => customers_command(&config, command).await,
        Command::Connectors { command } => match command {
            ConnectorsCommand::List { json } => {
                let store = daemon::open_store(&config).await?;
                let rows = view::connectors(store.as_ref(), &config).await?;
                if *json {
                    print_json(&rows)?;
                } else {
                    print!("{}", view::text::connectors(&rows));
                }
                Ok(ExitCode::SUCCESS)
            }
            ConnectorsCommand::Test { name } => {
                let Some(inst) = config.instance(name) else {
                    eprintln!("error: no instance named {name:?} in the configuration");
                    return Ok(ExitCode::from(2));
                };
                let conn = inst.build_connector().map_err(anyhow::Error::msg)?;
                if config.store.secret_key.is_some() {
                    let store: Arc<dyn Store> = daemon::open_store(&config).await?;
                    crate::vault::attach(&config, &store, std::slice::from_ref(&conn))?;
                }
                match conn.health_check().await {
                    Ok(()) => {
                        println!("{name}: ok");
                        if let Some(access) = conn.describe_access() {
                            println!("{name}: {access}");
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => {
                        println!("{name}: {} failure: {e}", e.kind());
                        Ok(ExitCode::from(1))
                    }
                }
            }
            ConnectorsCommand::Webhook { name, set, json } => {
                connectors_webhook(&config, name, *set, *json).await
            }
            ConnectorsCommand::Authorize { name, listen, json } => {
                connectors_authorize(&config, name, *listen, *json).await
            }
        },
    }
}

/// `hourglass connectors authorize NAME --listen ADDR`.
async fn connectors_authorize(
    config: &Config,
    name: &str,
    listen: Option<std::net::SocketAddr>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if let Err(e) = crate::oauth::consent_for(config, name) {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    let Some(listen) = listen else {
        let admin = match &config.http.public_url {
            Some(u) => format!("{}/admin", u.trim_end_matches('/')),
            None => "the web inbox's admin page".to_owned(),
        };
        eprintln!(
            "error: give --listen 127.0.0.1:PORT to receive the redirect here (the platform's app must accept http://127.0.0.1:PORT/oauth/callback), or press Connect on {admin} while the daemon runs"
        );
        return Ok(ExitCode::from(2));
    };
    let store: Arc<dyn Store> = daemon::open_store(config).await?;
    let outcome = crate::oauth::run_loopback(config, Some(store), name, listen, |url, callback| {
        // The URL goes to stdout alone on its line, for scripts and for
        // copying; the explanation to stderr.
        eprintln!(
            "Open this address in a browser where you are signed in as the seller; the platform will send the browser back to {callback} (valid 10 minutes):"
        );
        println!("{url}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })
    .await?;
    match outcome {
        Ok(connected) => {
            if json {
                print_json(&connected)?;
            } else {
                print!("{}", connected.text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {name}: not connected: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `hourglass connectors webhook NAME [--set]`.
async fn customers_command(
    config: &Config,
    command: &CustomersCommand,
) -> anyhow::Result<ExitCode> {
    use crate::customers::CustomerRef;
    use crate::store::{CustomerStore, StoreError};
    let parse = |s: &str| CustomerRef::parse(s).map_err(anyhow::Error::msg);
    let store = daemon::open_store(config).await?;
    let now = Utc::now();
    let (shown, json) = match command {
        CustomersCommand::Show { customer, json } => (parse(customer)?, *json),
        CustomersCommand::Link { a, b, actor, json } => {
            let done = store.link_customers(&parse(a)?, &parse(b)?, actor).await;
            match done {
                Ok(id) => {
                    if !json {
                        println!("Linked: {a} and {b} are customer {id}.");
                    }
                    (CustomerRef::Customer(id), *json)
                }
                Err(StoreError::NotFound(e) | StoreError::Invalid(e)) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
        CustomersCommand::Unlink { a, b, actor, json } => {
            let b_ref = b.as_deref().map(parse).transpose()?;
            match store
                .unlink_customers(&parse(a)?, b_ref.as_ref(), actor)
                .await
            {
                Ok(id) => {
                    if !json {
                        println!(
                            "Split: {} is customer {id} now; automatic links will not join them again.",
                            b.as_deref().unwrap_or(a)
                        );
                    }
                    (CustomerRef::Customer(id), *json)
                }
                Err(StoreError::NotFound(e) | StoreError::Invalid(e)) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let Some(customer) = view::customer(store.as_ref(), &shown, now).await? else {
        eprintln!("error: no such customer: {shown}");
        return Ok(ExitCode::from(1));
    };
    if json {
        print_json(&customer)?;
    } else if matches!(command, CustomersCommand::Show { .. }) {
        print!("{}", view::text::customer(&customer));
    }
    Ok(ExitCode::SUCCESS)
}

async fn connectors_webhook(
    config: &Config,
    name: &str,
    set: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(inst) = config.instance(name) else {
        eprintln!("error: no instance named {name:?} in the configuration");
        return Ok(ExitCode::from(2));
    };
    let conn = inst.build_connector().map_err(anyhow::Error::msg)?;
    if set {
        let Some(public) = &config.http.public_url else {
            eprintln!("error: [http] public_url is not set: it is the address the platform pushes to ({{public_url}}/webhooks/{name})");
            return Ok(ExitCode::from(2));
        };
        let url = format!("{}/webhooks/{name}", public.trim_end_matches('/'));
        if let Err(e) = conn.register_webhook(&url).await {
            eprintln!("error: {name}: cannot set the webhook: {e}");
            return Ok(ExitCode::from(1));
        }
        if !json {
            println!("{name}: webhook set to {url}");
        }
    }
    let status = match conn.webhook_status().await {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!(
                "error: {name}: a {} instance has no webhook to show",
                inst.kind()
            );
            return Ok(ExitCode::from(2));
        }
        Err(e) => {
            eprintln!("error: {name}: cannot read the webhook: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if json {
        print_json(&serde_json::json!({
            "instance": name,
            "url": status.url,
            "pending_updates": status.pending_updates,
            "last_error": status.last_error,
            "last_error_at": status.last_error_at,
        }))?;
    } else {
        if status.url.is_empty() {
            println!("{name}: no webhook set");
        } else {
            println!("{name}: webhook {}", status.url);
        }
        if let Some(n) = status.pending_updates {
            println!("  pending updates: {n}");
        }
        match (&status.last_error, status.last_error_at) {
            (Some(e), Some(at)) => println!("  last error: {e} (at {})", at.to_rfc3339()),
            (Some(e), None) => println!("  last error: {e}"),
            _ => println!("  last error: none"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The configured store as a concrete [`crate::store::SqlStore`], without
/// migrating it.
async fn connect_store(config: &Config) -> anyhow::Result<crate::store::SqlStore> {
    let password = config
        .store
        .password
        .as_ref()
        .map(|p| p.resolve())
        .transpose()?;
    Ok(crate::store::SqlStore::connect(&config.store.url, password.as_ref(), 1).await?)
}

/// For tests and embedding: the store behind a config, as a trait object.
pub async fn store_for(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(daemon::open_store(config).await?)
}

/// `hourglass status`: the daemons on the store and their leases.
#[derive(Debug, serde::Serialize)]
pub struct DaemonStatus {
    pub daemons: Vec<DaemonView>,
    pub leases: Vec<LeaseView>,
    /// Instances whose credentials the platform refuses: an admin must act.
    pub auth_failed: Vec<AuthFailedView>,
}

/// An instance whose credentials were refused, as `status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct AuthFailedView {
    pub instance: String,
    pub error: Option<String>,
    /// When the one admin alert of this episode was queued.
    pub auth_alerted_at: Option<chrono::DateTime<Utc>>,
}

/// A daemon, as `status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct DaemonView {
    #[serde(flatten)]
    pub daemon: crate::store::DaemonInfo,
    /// Its heartbeat has not expired.
    pub alive: bool,
    /// The instances whose lease it holds now.
    pub leases: Vec<String>,
}

/// An instance's lease, as `status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct LeaseView {
    #[serde(flatten)]
    pub lease: crate::store::LeaseRow,
    /// Held (not released, not expired).
    pub held: bool,
}

async fn daemon_status(
    store: &dyn crate::store::Store,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<DaemonStatus> {
    let leases = store.leases().await.context("Cannot read the leases")?;
    let daemons = store.daemons().await.context("Cannot read the daemons")?;
    let daemons = daemons
        .into_iter()
        .map(|d| DaemonView {
            alive: d.expires_at > now,
            leases: leases
                .iter()
                .filter(|l| l.is_held(now) && l.holder.as_deref() == Some(d.id.as_str()))
                .map(|l| l.instance.clone())
                .collect(),
            daemon: d,
        })
        .collect();
    let leases = leases
        .into_iter()
        .map(|l| LeaseView {
            held: l.is_held(now),
            lease: l,
        })
        .collect();
    let auth_failed = store
        .instances()
        .await
        .context("Cannot read the instances")?
        .into_iter()
        .filter(|i| i.state == "auth_failed")
        .map(|i| AuthFailedView {
            instance: i.name,
            error: i.last_error,
            auth_alerted_at: i.auth_alerted_at,
        })
        .collect();
    Ok(DaemonStatus {
        daemons,
        leases,
        auth_failed,
    })
}

fn render_status(s: &DaemonStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if s.daemons.is_empty() {
        out.push_str("No daemon is running on this store.\n");
    }
    for d in &s.daemons {
        let _ = writeln!(
            out,
            "{}  {}  last heartbeat {}  {} lease(s): {}",
            d.daemon.id,
            if d.alive {
                "alive"
            } else {
                "gone (heartbeat expired)"
            },
            d.daemon
                .heartbeat_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            d.leases.len(),
            d.leases.join(", ")
        );
    }
    let free: Vec<&str> = s
        .leases
        .iter()
        .filter(|l| !l.held)
        .map(|l| l.lease.instance.as_str())
        .collect();
    if !free.is_empty() {
        let _ = writeln!(out, "Not held by any daemon: {}", free.join(", "));
    }
    for a in &s.auth_failed {
        let alerted = a
            .auth_alerted_at
            .map(|t| format!("admin alerted {}", t.format("%Y-%m-%d %H:%M UTC")))
            .unwrap_or_else(|| "admin not alerted yet".to_owned());
        let _ = writeln!(
            out,
            "Credentials refused: {} ({alerted}): {}",
            a.instance,
            a.error.as_deref().unwrap_or("")
        );
    }
    out
}
