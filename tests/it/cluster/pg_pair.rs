//! A PostgreSQL primary and its synchronous standby of a test's own, started by
//! `scripts/pg-replica` on free ports in a temporary folder, and stopped when dropped.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::{free_port, run_script};

/// A primary and a standby of the test's own; stopped when dropped.
pub struct PgPair {
    dir: tempfile::TempDir,
    /// Both hosts, as libpq takes them (the primary first).
    pub url: String,
    /// The primary's port, then the standby's.
    pub ports: [u16; 2],
}

fn script(args: &[&str]) -> String {
    run_script("pg-replica", args)
}

impl PgPair {
    pub fn start() -> PgPair {
        let dir = tempfile::tempdir().unwrap();
        let ports = [free_port(), free_port()];
        let path = dir.path().to_str().unwrap().to_owned();
        let url = script(&["start", &path, &ports[0].to_string(), &ports[1].to_string()]);
        PgPair { dir, url, ports }
    }

    pub fn run(&self, what: &str, name: &str) {
        script(&[what, self.dir.path().to_str().unwrap(), name]);
    }

    /// Whether the server on `port` is in recovery (a standby).
    pub fn in_recovery(&self, port: u16) -> bool {
        self.sql(port, "SELECT pg_is_in_recovery()") == "t"
    }

    /// The URL of the server on `port` alone.
    pub fn url_of(port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }

    /// What `sql` answers on the server on `port` (psql's unaligned text).
    pub fn sql(&self, port: u16, sql: &str) -> String {
        let out = Command::new("psql")
            .arg(Self::url_of(port))
            .args(["-qtAc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        let _ = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-replica"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}
