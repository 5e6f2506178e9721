//! A dead node, a Redis outage, a database outage and a node whose clock is off, each on its own.

use serde_json::json;
use uuid::Uuid;

use super::{PrivateRedis, cluster, cluster_on, group, owner};
use crate::helpers::{
    Backend, Binary, Client, POLL, SECONDS_5, SECONDS_10, TestDb, assert_kept, eventually,
    free_port,
};

#[tokio::test]
async fn with_redis_down_remote_work_fails_fast_local_work_goes_on_and_all_heals() {
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let db = TestDb::new(Backend::Postgres).await;
    let nodes = cluster_on(&db, 2, &redis.url(), &[]).await;
    // Two users on node 0, in a group node 1 owns (reached over Redis), and one node 0 owns.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = nodes[0].client(a).await;
    let mut cb = nodes[0].client(b).await;
    let mut remote = group(&mut ca, &[b]).await;
    while owner(&remote, 2) != 1 {
        remote = group(&mut ca, &[b]).await;
    }
    let mut local = group(&mut ca, &[b]).await;
    while owner(&local, 2) != 0 {
        local = group(&mut ca, &[b]).await;
    }
    let r = ca
        .call("send", json!({"conv": remote, "body": "before"}))
        .await;
    assert_eq!(r["t"], "sent", "{r}");

    redis.kill();
    // Within a heartbeat the node knows: a request for node 1 is refused, not left to time out.
    let refusing = "sends to a remote owner are refused with Redis down";
    eventually(SECONDS_5, POLL, refusing, async || {
        let started = std::time::Instant::now();
        let r = ca
            .call("send", json!({"conv": remote, "body": "during"}))
            .await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{r}");
        // Refused for knowing Redis is away, not for having waited out the 4.8 s deadline.
        let refused = r["code"] == "unavailable";
        if refused {
            let took = started.elapsed();
            assert!(
                took < std::time::Duration::from_secs(2),
                "refused only after {took:?}"
            );
        }
        refused.then_some(())
    })
    .await;
    // What needs no other node goes on.
    for i in 0..5 {
        let r = ca
            .call("send", json!({"conv": local, "body": format!("local {i}")}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
        let pushed = loop {
            let m = cb.push("message").await;
            if m["conv"] == local.as_str() {
                break m;
            }
        };
        assert_eq!(pushed["body"], format!("local {i}"));
    }

    let _redis = PrivateRedis::start(port);
    // Healed by itself within PROTOCOL's 10 s.
    let healing = "the cluster heals after Redis's return";
    eventually(SECONDS_10, POLL, healing, async || {
        let r = ca
            .call("send", json!({"conv": remote, "body": "after"}))
            .await;
        (r["t"] == "sent").then_some(())
    })
    .await;
    // One dense order.
    assert_kept(&mut ca, &remote, &[]).await;
}

#[tokio::test]
async fn a_killed_node_loses_nothing_acknowledged_and_its_work_moves_within_10_s() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut nodes = cluster(&db, 3).await;
    // Conversations of users on node 0, some owned by node 2, which dies.
    let (watcher, a) = (Uuid::new_v4(), Uuid::new_v4());
    let mut cw = nodes[0].client(watcher).await;
    let mut ca = nodes[0].client(a).await;
    let on_dying = Uuid::new_v4();
    let _doomed = nodes[2].client(on_dying).await;
    cw.call("watch", json!({"users": [on_dying.to_string()]}))
        .await;
    let mut convs = Vec::new();
    while convs.len() < 3 {
        let conv = group(&mut ca, &[Uuid::new_v4()]).await;
        if owner(&conv, 3) == 2 {
            convs.push(conv);
        }
    }
    let mut acked: Vec<(String, String)> = Vec::new();
    for conv in &convs {
        for i in 0..5 {
            let r = ca
                .call("send", json!({"conv": conv, "body": format!("before {i}")}))
                .await;
            assert_eq!(r["t"], "sent", "{r}");
            acked.push((conv.clone(), r["mid"].as_str().unwrap().to_owned()));
        }
    }
    nodes[2].child.kill().unwrap();
    let died = std::time::Instant::now();
    // Each conversation is served again by a survivor within PROTOCOL's 10 s.
    for conv in &convs {
        let within = SECONDS_10.saturating_sub(died.elapsed());
        let mid = eventually(within, POLL, "a survivor serves it", async || {
            let r = ca
                .call("send", json!({"conv": conv, "body": "after"}))
                .await;
            (r["t"] == "sent").then(|| r["mid"].as_str().unwrap().to_owned())
        })
        .await;
        acked.push((conv.clone(), mid));
    }
    println!(
        "a killed node's conversations served again after {:?}",
        died.elapsed()
    );
    // Its user went offline for the watcher on another node.
    let offline = loop {
        let f = cw.push("presence").await;
        if f["user"] == on_dying.to_string() && f["status"] == "offline" {
            break f;
        }
    };
    assert_eq!(offline["status"], "offline");
    // Nothing acknowledged is lost, and every conversation is still 1..N.
    for conv in &convs {
        let mids: Vec<String> = acked
            .iter()
            .filter(|(c, _)| c == conv)
            .map(|(_, m)| m.clone())
            .collect();
        assert_kept(&mut ca, conv, &mids).await;
    }
    let _ = nodes.pop();
}

#[tokio::test]
async fn postgres_stopped_under_a_clusters_traffic_loses_nothing_and_heals() {
    let db = TestDb::new(Backend::Postgres).await;
    let db_name = db.url.rsplit('/').next().unwrap().to_owned();
    let nodes = cluster(&db, 2).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = nodes[0].client(a).await;
    let mut cb = nodes[1].client(b).await;
    let conv = group(&mut ca, &[b]).await;
    let mut acked: Vec<String> = Vec::new();
    let send = async |c: &mut Client, body: &str| -> serde_json::Value {
        c.call("send", json!({"conv": conv, "body": body})).await
    };
    for i in 0..10 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        let r = send(c, "before").await;
        assert_eq!(r["t"], "sent", "{r}");
        acked.push(r["mid"].as_str().unwrap().to_owned());
    }
    crate::helpers::outage(&db_name, true).await;
    // Every request is answered (never left hanging) while the database is away.
    for i in 0..6 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        let started = std::time::Instant::now();
        let r = send(c, "during").await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{r}");
        match r["t"].as_str() {
            Some("sent") => acked.push(r["mid"].as_str().unwrap().to_owned()),
            _ => assert_eq!(r["code"], "unavailable", "{r}"),
        }
    }
    crate::helpers::outage(&db_name, false).await;
    let back = std::time::Instant::now();
    for c in [&mut ca, &mut cb] {
        loop {
            let r = send(c, "after").await;
            if r["t"] == "sent" {
                acked.push(r["mid"].as_str().unwrap().to_owned());
                break;
            }
            assert!(back.elapsed() < std::time::Duration::from_secs(10), "{r}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert_kept(&mut ca, &conv, &acked).await;
}

#[tokio::test]
async fn a_node_restarted_at_once_under_its_own_name_reaches_every_users_node() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut nodes = cluster(&db, 3).await;
    // a on node 0 and b on node 2, in conversations node 1 owns.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = nodes[0].client(a).await;
    let mut cb = nodes[2].client(b).await;
    let mut convs = Vec::new();
    while convs.len() < 4 {
        let conv = group(&mut ca, &[b]).await;
        if owner(&conv, 3) == 1 {
            convs.push(conv);
        }
    }
    // Killed and started again at once (same name, same port), well inside the 3 s in which the
    // others would have counted it dead: it never leaves their live set.
    nodes[1].kill_and_restart().await;
    let restarted = std::time::Instant::now();
    for conv in &convs {
        let body = format!("after the restart in {conv}");
        loop {
            let r = ca.call("send", json!({"conv": conv, "body": body})).await;
            if r["t"] == "sent" {
                break;
            }
            assert_eq!(r["code"], "unavailable", "{r}");
            assert!(
                restarted.elapsed() < std::time::Duration::from_secs(10),
                "{r}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // The owner's push reaches b on node 2 (the restarted owner learnt where b is).
        let pushed = loop {
            let m = cb.push("message").await;
            if m["conv"] == conv.as_str() {
                break m;
            }
        };
        assert_eq!(pushed["body"], body);
    }
    // The restarted node knows who is connected elsewhere.
    let mut asker = nodes[1].client(Uuid::new_v4()).await;
    let r = asker
        .call("presence", json!({"users": [a.to_string(), b.to_string()]}))
        .await;
    let statuses: Vec<&str> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["online", "online"], "{r}");
}

/// Liveness is judged by Redis's clock, not each node's own: a node whose clock runs 20 s behind
/// (a badly synced host) stays alive to the others, so its users stay online for watchers
/// elsewhere and every node counts the same live set (and so names the same owners).
#[tokio::test]
async fn a_node_whose_clock_is_off_stays_alive_to_the_others() {
    let db = TestDb::new(Backend::Postgres).await;
    let (redis, prefix) = (
        super::redis_url(),
        format!("test-{}", Uuid::new_v4().simple()),
    );
    let env = |id| {
        [
            ("CHAT_DATABASE_URL", db.url.as_str()),
            ("CHAT_REDIS_URL", redis.as_str()),
            ("CHAT_REDIS_PREFIX", prefix.as_str()),
            ("CHAT_NODE_ID", id),
        ]
    };
    let on_time = Binary::start(Backend::Postgres, &env("node-0")).await;
    // libfaketime moves the wall clock only (timers run on the monotonic one, left alone).
    let skew = "export LD_PRELOAD=\"$(ls /usr/lib/*/faketime/libfaketimeMT.so.1 | head -n 1)\" \
                FAKETIME=-20s FAKETIME_DONT_FAKE_MONOTONIC=1";
    let behind = Binary::start_with(Backend::Postgres, &env("node-1"), Some(skew)).await;
    let (user, watcher, friend) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut u = behind.client(user).await;
    let mut w = on_time.client(watcher).await;
    // The node's clock is behind indeed: its hello says its time.
    let skewed_by = w.hello["time"].as_i64().unwrap() - u.hello["time"].as_i64().unwrap();
    assert!(
        (15_000..25_000).contains(&skewed_by),
        "clocks {skewed_by} ms apart"
    );
    // Past the dead-node window (3 s) and its heartbeats: a node judged by its own clock's
    // heartbeats is out of the others' live set by now, and its users with it.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    for node in [&on_time, &behind] {
        assert_eq!(node.metric("chat_cluster_live_nodes").await, 2.0);
    }
    let p = w
        .call("presence", json!({"users": [user.to_string()]}))
        .await;
    assert_eq!(p["items"][0]["status"], "online", "{p}");
    // A chat across the two works both ways.
    let mut f = on_time.client(friend).await;
    let conv = u.direct_with(friend).await;
    u.sends_to(&mut f, &conv, "from behind").await;
    f.sends_to(&mut u, &conv, "back").await;
}
