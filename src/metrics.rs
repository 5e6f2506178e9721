//! Prometheus metrics: the recorder, and the text served at `/metrics`.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the global recorder; a second install (tests with several nodes) reuses nothing and
/// returns a fresh, unconnected handle.
pub fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new();
    match builder.install_recorder() {
        Ok(handle) => handle,
        Err(_) => PrometheusBuilder::new().build_recorder().handle(),
    }
}
