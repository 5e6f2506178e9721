//! The Grafana dashboard in `deploy/` names only metrics a node serves: each series it queries
//! is in `/metrics` of a real node that served one chat.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Backend, Binary};

const DASHBOARD: &str = include_str!("../../deploy/grafana-dashboard.json");

/// Every `expr` of every panel.
fn queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_served() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
    let name = regex::Regex::new(r"chat_[a-z_]+").unwrap();

    let b = Binary::start(Backend::Sqlite, &[]).await;
    let mut c = b.client(Uuid::new_v4()).await;
    let conv = c.direct_with(Uuid::new_v4()).await;
    let r = c.call("send", json!({"conv": conv, "body": "hi"})).await;
    assert_eq!(r["t"], "sent", "{r}");
    let (status, text) = b.get("/metrics").await;
    assert_eq!(status, 200);
    let served: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    // The events an operator must see, though a healthy node shows them at 0.
    let charted = queries(&dashboard).join(" ");
    for event in [
        "chat_bus_disconnections_total",
        "chat_actor_failures_total",
        "chat_slow_consumers_total",
        "chat_connections_refused_total",
    ] {
        assert!(charted.contains(event), "the dashboard leaves out {event}");
    }
    for expr in queries(&dashboard) {
        for m in name.find_iter(&expr) {
            assert!(
                served.contains(&m.as_str()),
                "the dashboard queries {} ({expr}), which /metrics does not serve",
                m.as_str()
            );
        }
    }
}
