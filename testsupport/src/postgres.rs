//! A throwaway PostgreSQL cluster on a free loopback port.
//!
//! `initdb` and `pg_ctl` refuse to run as root, so when we are root they run
//! as the `postgres` user (Debian's package creates it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::net::{free_port, wait_for_port};
use crate::pids::PidFile;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// The postmaster's, once it runs.
    pid: Option<PidFile>,
}

fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed: apt-get install postgresql (or set PG_BIN_DIR)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no /usr/lib/postgresql/*/bin/initdb: apt-get install postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    /// Creates and starts a cluster. Stopped and removed on drop.
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = pg_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("hg-pg-").tempdir()?;
        let as_postgres = is_root();
        if as_postgres {
            let s = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !s.success() {
                bail!("chown postgres failed");
            }
        }
        let mut pg = Postgres {
            dir,
            bin,
            port: free_port(),
            as_postgres,
            pid: None,
        };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
        )?;
        pg.start_server()?;
        Ok(pg)
    }

    /// Starts the postmaster on this cluster's data dir and port.
    fn start_server(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-o",
                &opts,
                "-l",
                &self.dir.path().join("log").to_string_lossy(),
                "-w",
                "start",
            ],
        )?;
        // pg_ctl -w has waited for the postmaster, which wrote its pid.
        let postmaster = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()));
        if let Some(postmaster) = postmaster {
            self.pid = Some(PidFile::record(
                postmaster,
                &format!("postgres {}", self.dir.path().display()),
            ));
        }
        wait_for_port(self.port, Duration::from_secs(20))?;
        Ok(())
    }

    /// Stops the server (fast shutdown: clients are disconnected, as in a
    /// restart by the operator or the package manager); the data stays.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", &data.to_string_lossy(), "-m", "fast", "-w", "stop"],
        )?;
        self.pid = None;
        Ok(())
    }

    /// Starts the server again after [`Postgres::stop`], on the same data
    /// dir and port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.start_server()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of a new, empty database in this cluster.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let psql = self.bin.join("psql");
        let out = Command::new(&psql)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-c",
            ])
            .arg(format!("CREATE DATABASE \"{name}\""))
            .output()
            .with_context(|| format!("running {}", psql.display()))?;
        if !out.status.success() {
            bail!("createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(self.url(name))
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let stopped = self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        if stopped.is_err() {
            // Still running: leave its pid file for the runner's cleanup.
            std::mem::forget(self.pid.take());
        }
    }
}
