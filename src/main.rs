//! `ferry`: the node binary. Subcommands: `run` (the node), `check-config` (print the effective
//! configuration), `tune --check` (report the host's kernel settings against the
//! recommendations), `healthcheck` (probe a running node's admin endpoint; for Docker
//! HEALTHCHECK), `dev-cert` (a local CA and a node certificate for TLS in tests). Only `run`
//! touches the data directory.

mod admin;
mod config;
mod http;
mod media;
mod node;
mod service;
mod sys;
mod tls;
mod tune;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "ferry: end-to-end-encrypted relay node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node.
    Run(Overrides),
    /// Validate the configuration and print the effective result as TOML.
    CheckConfig(Overrides),
    /// Report the kernel settings and limits a node host should have: each with its current
    /// value, the recommendation and why. Changes nothing.
    Tune {
        /// Report only (the one mode: ferry never changes the system).
        #[arg(long)]
        check: bool,
        /// Shards the host will run (for the locked-memory check); default: the CPUs in the
        /// affinity mask but one.
        #[arg(long)]
        shards: Option<usize>,
        /// Root of the file system to read (tests).
        #[arg(long, hide = true, default_value = "/")]
        root: PathBuf,
    },
    /// Exit 0 if the node's admin endpoint answers /readyz with 200.
    Healthcheck {
        #[arg(long, env = "FERRY_ADMIN_LISTEN", default_value = "127.0.0.1:7701")]
        admin_listen: SocketAddr,
    },
    /// Write a local CA (ca.pem) and a node certificate it signs (cert.pem, key.pem) for TLS on
    /// a test or development node, and print how to use them. Not for production.
    DevCert {
        /// Directory to write into (created if missing); existing files are not overwritten.
        #[arg(long)]
        out: PathBuf,
        /// DNS name or IP address the certificate is for (repeatable).
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1", "::1"])]
        names: Vec<String>,
    },
}

/// Flags override the environment, which overrides the file, which overrides the defaults.
#[derive(Args, Debug, Default, Clone)]
struct Overrides {
    /// TOML configuration file.
    #[arg(long, short, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// Plain-TCP listen address (repeatable).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// TLS listen address (repeatable).
    #[arg(long)]
    listen_tls: Vec<SocketAddr>,
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    #[arg(long)]
    tls_key: Option<PathBuf>,
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shard cores (0 = all allowed CPUs but the service core).
    #[arg(long)]
    shards: Option<usize>,
    /// Allow plain TCP on non-loopback addresses.
    #[arg(long)]
    insecure_plaintext: bool,
    /// text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Seconds added to the wall clock (testing only).
    #[arg(long, hide = true, allow_hyphen_values = true)]
    clock_offset_s: Option<i64>,
}

impl Overrides {
    fn resolve(self) -> anyhow::Result<Config> {
        let mut c = Config::load(self.config.as_deref(), std::env::vars())?;
        if !self.listen.is_empty() {
            c.listen = self.listen;
        }
        if !self.listen_tls.is_empty() {
            c.listen_tls = self.listen_tls;
        }
        c.tls_cert = self.tls_cert.or(c.tls_cert);
        c.tls_key = self.tls_key.or(c.tls_key);
        c.admin_listen = self.admin_listen.unwrap_or(c.admin_listen);
        c.data_dir = self.data_dir.unwrap_or(c.data_dir);
        c.shards = self.shards.unwrap_or(c.shards);
        c.insecure_plaintext |= self.insecure_plaintext;
        c.log_format = self.log_format.unwrap_or(c.log_format);
        c.clock_offset_s = self.clock_offset_s.unwrap_or(c.clock_offset_s);
        c.validate()?;
        Ok(c)
    }
}

fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: never into a file, a pipe or a journal.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig(o) => o.resolve().and_then(|c| {
            print!("{}", toml::to_string_pretty(&c)?);
            Ok(())
        }),
        Command::Run(o) => o.clone().resolve().and_then(|c| {
            init_logging(&c.log_format);
            node::run(c, move || o.clone().resolve())
        }),
        Command::Tune {
            check,
            shards,
            root,
        } => {
            if check {
                let shards =
                    shards.unwrap_or_else(|| sys::allowed_cpus().len().saturating_sub(1).max(1));
                tune::print(&tune::check(
                    &root,
                    shards,
                    config::Limits::default().io_memory_bytes as u64,
                ));
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "ferry tune only reports (--check); apply tuning/99-ferry.conf and tuning/TUNING.md yourself"
                ))
            }
        }
        Command::Healthcheck { admin_listen } => {
            match http::healthcheck(admin_listen, Duration::from_secs(2)) {
                Ok(true) => Ok(()),
                Ok(false) => Err(anyhow::anyhow!("node at {admin_listen} is not ready")),
                Err(e) => Err(anyhow::anyhow!("node at {admin_listen} unreachable: {e}")),
            }
        }
        Command::DevCert { out, names } => dev_cert(&out, &names),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole cause chain, no backtrace: a message that spans lines (a
            // library's) is joined.
            let chain: Vec<String> = e
                .chain()
                .map(|c| {
                    c.to_string()
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            eprintln!("ferry: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn dev_cert(out: &std::path::Path, names: &[String]) -> anyhow::Result<()> {
    let now_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| anyhow::anyhow!("the clock is before 1970"))?
        .as_secs();
    let d = tls::dev_cert(out, names, now_unix_s)?;
    // TOML strings, quoted and escaped as the configuration file needs them.
    let quote = |p: &std::path::Path| toml::Value::String(p.display().to_string()).to_string();
    let server_name = &names[0];
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "wrote a local CA and a node certificate for {} (valid until {}):",
        names.join(", "),
        d.not_after
    )?;
    writeln!(
        o,
        "  {}  the CA: clients trust this file (its private key was not kept)",
        d.ca.display()
    )?;
    writeln!(o, "  {}  the node's certificate", d.cert.display())?;
    writeln!(
        o,
        "  {}  the node's private key (mode 0600)",
        d.key.display()
    )?;
    writeln!(o)?;
    writeln!(o, "node configuration (TOML):")?;
    writeln!(o, "  listen_tls = [\"127.0.0.1:7443\"]")?;
    writeln!(o, "  tls_cert = {}", quote(&d.cert))?;
    writeln!(o, "  tls_key = {}", quote(&d.key))?;
    writeln!(
        o,
        "or: ferry run --listen-tls 127.0.0.1:7443 --tls-cert {} --tls-key {}",
        d.cert.display(),
        d.key.display()
    )?;
    writeln!(o)?;
    writeln!(
        o,
        "clients trust ca.pem (not cert.pem) and connect to the name {server_name}:"
    )?;
    writeln!(
        o,
        "  hello example: hello ferry+tls://{server_name}:7443 --tls-ca {}",
        d.ca.display()
    )?;
    writeln!(
        o,
        "  SDK: Client::connect_url(\"ferry+tls://{server_name}:7443\", &ConnectOptions {{ trust: Trust::CaFile(\"{}\".into()), ..Default::default() }})",
        d.ca.display()
    )?;
    writeln!(
        o,
        "  openssl s_client -connect 127.0.0.1:7443 -servername {server_name} -CAfile {}",
        d.ca.display()
    )?;
    writeln!(
        o,
        "local tests only: whoever holds key.pem can pose as {server_name} to clients that trust ca.pem"
    )?;
    Ok(())
}
