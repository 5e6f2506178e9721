//! A Redis Cluster of the test's own (three masters with a replica each, started by
//! `scripts/redis-cluster`), whose servers the test may kill and restart.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::{free_port, run_script};

pub struct PrivateRedisCluster {
    dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/redis-cluster")
}

/// A free port whose cluster bus port (+10000) is free too.
pub fn free_port_with_bus() -> u16 {
    loop {
        let port = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl PrivateRedisCluster {
    pub fn start() -> PrivateRedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 6 {
            let port = free_port_with_bus();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let listed: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut args = vec!["start", dir.path().to_str().unwrap()];
        args.extend(listed.iter().map(String::as_str));
        let url = run_script("redis-cluster", &args);
        PrivateRedisCluster { dir, ports, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// What `redis-cli -p port args...` prints ("" when the server does not answer).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The ports of the masters and of the replicas, as the instance on `asked` sees them
    /// (failed servers left out).
    pub fn roles(&self, asked: u16) -> (Vec<u16>, Vec<u16>) {
        let (mut masters, mut replicas) = (Vec::new(), Vec::new());
        for line in self.cli(asked, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 3 || fields[2].contains("fail") {
                continue;
            }
            let Some(port) = fields[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
            else {
                continue;
            };
            if fields[2].contains("master") {
                masters.push(port);
            } else {
                replicas.push(port);
            }
        }
        (masters, replicas)
    }

    /// How many shard channels matching `pattern` the server on `port` carries.
    pub fn shard_channels(&self, port: u16, pattern: &str) -> usize {
        self.cli(port, &["pubsub", "shardchannels", pattern])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    /// `kill -9` of the server on `port`.
    pub fn kill(&self, port: u16) {
        let pid =
            std::fs::read_to_string(self.dir.path().join(format!("{port}/redis.pid"))).unwrap();
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts the killed server on `port` again; it rejoins the cluster.
    pub fn restart(&self, port: u16) {
        let dir = self.dir.path().to_str().unwrap();
        run_script("redis-cluster", &["restart", dir, &port.to_string()]);
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}
