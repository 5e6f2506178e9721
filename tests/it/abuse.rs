//! One client must never hurt another: floods against the real binary, each beside an ordinary
//! pair of users whose traffic must go on. The floods' figures (the node's memory, the other
//! users' send → push latency) are printed for the record; the assertions are about what must
//! hold on any machine: nothing stays behind, nobody else is cut off or refused.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Backend, Binary, Client, POLL, SECONDS_10, eventually, percentiles};

async fn create(c: &mut Client, kind: &str, members: &[Uuid]) -> String {
    let members: Vec<String> = members.iter().map(Uuid::to_string).collect();
    let r = c
        .call("create", json!({"kind": kind, "members": members}))
        .await;
    r["conversation"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("create failed: {r}"))
        .to_owned()
}

/// Another user's traffic during a flood: a direct pair, one message every 50 ms (within the
/// default 20 a second), each timed from its send to the other's push.
struct Bystanders {
    task: tokio::task::JoinHandle<(Vec<f64>, Vec<Value>)>,
}

impl Bystanders {
    async fn start(b: &Binary, messages: usize) -> Bystanders {
        let (u, v) = (Uuid::new_v4(), Uuid::new_v4());
        let mut sender = b.client(u).await;
        let mut receiver = b.client(v).await;
        let conv = create(&mut sender, "direct", &[v]).await;
        let start = Instant::now();
        let sending = tokio::spawn(async move {
            let mut refused = Vec::new();
            for _ in 0..messages {
                let body = start.elapsed().as_micros().to_string();
                let r = sender
                    .call("send", json!({"conv": conv, "body": body}))
                    .await;
                if r["t"] != "sent" {
                    refused.push(r);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            refused
        });
        let task = tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sending = sending;
            let mut refused = Vec::new();
            // How many pushes to wait for, known once every send is answered.
            let mut expected = None;
            while expected.is_none_or(|n| latencies.len() < n) {
                tokio::select! {
                    done = &mut sending, if expected.is_none() => {
                        refused = done.unwrap();
                        expected = Some(messages - refused.len());
                    }
                    m = receiver.push("message") => {
                        let sent_at: u128 = m["body"].as_str().unwrap().parse().unwrap();
                        latencies.push((start.elapsed().as_micros() - sent_at) as f64 / 1000.0);
                    }
                }
            }
            (latencies, refused)
        });
        Bystanders { task }
    }

    /// Waits for the bystanders' traffic to end: their latencies and any refused send.
    async fn finish(self, what: &str) {
        let (latencies, refused) = self.task.await.unwrap();
        let (p50, p99) = percentiles(latencies.clone());
        println!(
            "{what}: bystanders' send -> push p50 {p50:.1} ms, p99 {p99:.1} ms over {} messages",
            latencies.len()
        );
        assert!(
            refused.is_empty(),
            "{what}: bystanders refused: {refused:?}"
        );
    }
}

#[tokio::test]
async fn typing_to_unknown_conversations_leaves_nothing_behind() {
    let b = Binary::start(Backend::Postgres, &[]).await;
    let rss_before = b.rss_kib();
    let bystanders = Bystanders::start(&b, 100).await;
    let mut flooder = b.client(Uuid::new_v4()).await;
    let mut rss_peak = rss_before;
    for i in 0..50_000 {
        let conv = Uuid::new_v4().to_string();
        flooder
            .send_frame(json!({"t": "typing", "conv": conv, "on": true}))
            .await;
        if i % 5000 == 0 {
            rss_peak = rss_peak.max(b.rss_kib());
        }
    }
    // The flooder is still served (and its frames were all read before this answer).
    assert_eq!(flooder.call("ping", json!({})).await["t"], "pong");
    rss_peak = rss_peak.max(b.rss_kib());
    bystanders
        .finish("typing to 50,000 unknown conversations")
        .await;
    // Nothing stays: the only live conversation is the bystanders' own.
    let gone = "no conversation actor stays behind but the bystanders' own";
    let live = eventually(SECONDS_10, POLL, gone, async || {
        let live = b.metric("chat_conversation_actors").await;
        (live <= 1.0).then_some(live)
    })
    .await;
    println!(
        "typing to unknown conversations: RSS {} -> peak {} KiB, {live} live conversation(s) after",
        rss_before, rss_peak
    );
    // One user's frames cannot buy the node 100 MB.
    assert!(
        rss_peak < rss_before + 100 * 1024,
        "RSS grew from {rss_before} to {rss_peak} KiB"
    );
}

#[tokio::test]
async fn a_typing_flood_costs_the_other_members_nothing() {
    let b = Binary::start(Backend::Sqlite, &[]).await;
    let flooder_id = Uuid::new_v4();
    let others: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
    let mut flooder = b.client(flooder_id).await;
    let conv = create(&mut flooder, "group", &others).await;
    let mut receivers = Vec::new();
    for u in &others {
        receivers.push(b.client(*u).await);
    }
    let started = Instant::now();
    for i in 0..20_000 {
        flooder
            .send_frame(json!({"t": "typing", "conv": conv, "on": i % 2 == 0}))
            .await;
    }
    let flood_secs = started.elapsed().as_secs_f64().ceil();
    // A message after the flood: each receiver reads up to it and counts the typing pushes.
    let r = flooder
        .call("send", json!({"conv": conv, "body": "end"}))
        .await;
    assert_eq!(r["t"], "sent", "{r}");
    // The throttle's burst and rate (4, then 2 a second), and a refresh or two.
    let allowed = 4 + 2 * flood_secs as usize + 2;
    for (i, rx) in receivers.iter_mut().enumerate() {
        let mut typing = rx.pushes.iter().filter(|f| f["t"] == "typing").count();
        loop {
            let f = rx
                .next_frame()
                .await
                .unwrap_or_else(|| panic!("receiver {i} was cut off (close {:?})", rx.close_code));
            match f["t"].as_str() {
                Some("typing") => typing += 1,
                Some("message") => break,
                _ => {}
            }
        }
        println!(
            "typing flood of 20,000 frames in {flood_secs} s: receiver {i} got {typing} typing pushes"
        );
        assert!(typing <= allowed, "receiver {i} got {typing} typing pushes");
        assert_eq!(rx.call("ping", json!({})).await["t"], "pong");
    }
}

#[tokio::test]
async fn a_read_flood_is_refused_beyond_its_budget_and_sends_go_on() {
    let b = Binary::start(Backend::Postgres, &[]).await;
    let flooder_id = Uuid::new_v4();
    let mut first = b.client(flooder_id).await;
    let conv = create(&mut first, "direct", &[Uuid::new_v4()]).await;
    for i in 0..20 {
        first
            .call("send", json!({"conv": conv, "body": format!("{i}")}))
            .await;
    }
    let bystanders = Bystanders::start(&b, 100).await;
    let rss_before = b.rss_kib();
    let mut floods = Vec::new();
    // The user's 16 connections (the per-user cap): this one and 15 more.
    for _ in 0..15 {
        let mut c = b.client(flooder_id).await;
        let conv = conv.clone();
        floods.push(tokio::spawn(async move {
            let (mut answered, mut limited) = (0, 0);
            for round in 0..5 {
                for i in 0..200u64 {
                    let t = if i % 2 == 0 {
                        "history"
                    } else {
                        "conversations"
                    };
                    let id = round * 1000 + i + 1;
                    c.send_frame(json!({"t": t, "id": id, "conv": conv, "limit": 200}))
                        .await;
                }
                for _ in 0..200 {
                    let f = c.next_frame().await.expect("the flooder was cut off");
                    match f["t"].as_str() {
                        Some("error") if f["code"] == "rate_limited" => limited += 1,
                        Some("error") => panic!("unexpected {f}"),
                        _ => answered += 1,
                    }
                }
            }
            (answered, limited)
        }));
    }
    let (mut answered, mut limited) = (0, 0);
    for f in floods {
        let (a, l) = f.await.unwrap();
        answered += a;
        limited += l;
    }
    println!(
        "read flood: {answered} answered, {limited} refused rate_limited; RSS {} -> {} KiB",
        rss_before,
        b.rss_kib()
    );
    bystanders.finish("read flood of 15 x 1,000 requests").await;
    assert!(limited > 0, "no request of the flood was refused");
    // The budget is per user: its burst (200) and rate (50/s) over a few seconds, no more.
    assert!(answered < 1000, "{answered} flood requests were served");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_alone_and_counted_once() {
    let b = Binary::start(
        Backend::Sqlite,
        &[
            ("CHAT_OUTBOUND_QUEUE", "8"),
            ("CHAT_RATE_MESSAGES", "100000"),
            ("CHAT_RATE_BURST", "100000"),
        ],
    )
    .await;
    let (a, reader_id, stalled_id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut sender = b.client(a).await;
    let mut reader = b.client(reader_id).await;
    let mut stalled = Client::connect_small_buffer(&b.url(), &b.token(stalled_id)).await;
    let conv = create(&mut sender, "group", &[reader_id, stalled_id]).await;
    let body = "x".repeat(4000);
    // Send until the node has let the stalled client go (it shows as offline), however big the
    // machine's socket buffers are.
    let mut cut_off = false;
    for i in 0..20_000 {
        let r = sender
            .call("send", json!({"conv": conv, "body": body}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
        if i % 20 == 19 {
            let p = reader
                .call("presence", json!({"users": [stalled_id.to_string()]}))
                .await;
            reader.pushes.clear();
            if p["items"][0]["status"] == "offline" {
                cut_off = true;
                break;
            }
        }
    }
    assert!(cut_off, "the stalled client was never cut off");
    // Reading now, it finds its backlog, then the end; if the goodbye got through, it says why.
    while let Some(f) = stalled.next_frame().await {
        if f["t"] == "bye" {
            assert_eq!(f["reason"], "slow_consumer");
        }
    }
    if let Some(code) = stalled.close_code {
        assert_eq!(code, 1008);
    }
    assert_eq!(reader.call("ping", json!({})).await["t"], "pong");
    assert_eq!(sender.call("ping", json!({})).await["t"], "pong");
    assert_eq!(b.metric("chat_slow_consumers_total").await, 1.0);
}

#[tokio::test]
async fn out_of_file_descriptors_the_node_backs_off_and_recovers() {
    let b = Binary::start_with(Backend::Sqlite, &[], Some("ulimit -n 64")).await;
    // Far more connections than the node may hold files: accept fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", b.port)).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(held);
    let serving = "the node serves again once files are free";
    let ready = async || (b.get("/readyz").await.0 == 200).then_some(());
    eventually(SECONDS_10, POLL, serving, ready).await;
    let failures = b.metric("chat_accept_errors_total").await;
    println!("3 s out of file descriptors: {failures} failed accepts");
    // Retrying every 50 ms would be ~60 in 3 s; doubling pauses up to 1 s make ~10.
    assert!(
        failures > 0.0,
        "the node never ran out: the test proves nothing"
    );
    assert!(
        failures < 30.0,
        "{failures} failed accepts in 3 s: no back-off"
    );
}
