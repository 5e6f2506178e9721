//! `--cluster-dir`: the nodes `scripts/cluster start` runs, read from the files it keeps in its
//! directory (`node-N.listen`: the address; `node-N.pid`: the process), so a run on a local
//! cluster needs no list of URLs and pids typed by hand.

use std::path::Path;

/// One node of the directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClusterNode {
    /// Its own WebSocket URL.
    pub(crate) url: String,
    /// Its process, when it runs.
    pub(crate) pid: Option<u32>,
}

/// The nodes in `dir`, in the order of their numbers; an error says what is missing.
pub(crate) fn read(dir: &Path) -> Result<Vec<ClusterNode>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("--cluster-dir {}: {e}", dir.display()))?;
    let mut numbered: Vec<(u32, ClusterNode)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(number) = name
            .strip_prefix("node-")
            .and_then(|rest| rest.strip_suffix(".listen"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let listen = std::fs::read_to_string(entry.path())
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        let pid = std::fs::read_to_string(dir.join(format!("node-{number}.pid")))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        numbered.push((
            number,
            ClusterNode {
                url: format!("ws://{}/v1/ws", listen.trim()),
                pid,
            },
        ));
    }
    if numbered.is_empty() {
        return Err(format!(
            "--cluster-dir {}: no node-N.listen there (is it a directory scripts/cluster start wrote?)",
            dir.display()
        ));
    }
    numbered.sort_by_key(|(number, _)| *number);
    Ok(numbered.into_iter().map(|(_, node)| node).collect())
}
