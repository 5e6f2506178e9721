//! Micro-benchmarks of the hot path's pure parts: decoding a `send`, encoding a `message` push,
//! and fanning one push out to a group (encode once, share the bytes) against encoding it per
//! recipient.

use std::sync::Arc;

use chat_actors::ids::{ConversationId, Mid, UserId};
use chat_actors::protocol::{
    Format, MessageObject, ServerFrame, SharedFrame, decode_request, encode_frame,
};
use criterion::{Criterion, criterion_group, criterion_main};

fn push() -> ServerFrame {
    ServerFrame::Message(MessageObject {
        conv: ConversationId::random(),
        seq: 42,
        mid: Mid::random(),
        from: UserId::random(),
        kind: "text".to_owned(),
        body: Some("x".repeat(100)),
        at: 1_795_000_000_000,
        deleted_at: None,
    })
}

fn codec(c: &mut Criterion) {
    let send = rmp_serde::to_vec_named(&serde_json::json!({
        "t": "send", "id": 7, "conv": ConversationId::random().to_string(), "body": "x".repeat(100)
    }))
    .expect("encode");
    c.bench_function("decode send (msgpack)", |b| {
        b.iter(|| decode_request(Format::MsgPack, &send))
    });
    let frame = push();
    c.bench_function("encode message push (msgpack)", |b| {
        b.iter(|| encode_frame(Format::MsgPack, &frame))
    });
    c.bench_function("encode message push (json)", |b| {
        b.iter(|| encode_frame(Format::Json, &frame))
    });
}

fn fanout(c: &mut Criterion) {
    let frame = push();
    c.bench_function("fan out to 7: encode once, share", |b| {
        b.iter(|| {
            let shared = Arc::new(SharedFrame::new(frame.clone()));
            (0..7)
                .map(|_| shared.bytes(Format::MsgPack).len())
                .sum::<usize>()
        })
    });
    c.bench_function("fan out to 7: encode per recipient", |b| {
        b.iter(|| {
            (0..7)
                .map(|_| encode_frame(Format::MsgPack, &frame).len())
                .sum::<usize>()
        })
    });
}

/// Encryption at rest: what sealing a 100-byte body on its way in and opening it on its way out
/// cost per message (`CHAT_ENCRYPTION_KEYS`).
fn sealing(c: &mut Criterion) {
    use base64::Engine;
    let spec = format!(
        "k1:{}",
        base64::engine::general_purpose::STANDARD.encode([3u8; 32])
    );
    let Ok(Some(keys)) = chat_backend::store::keyring::Keyring::parse(&spec) else {
        return;
    };
    let mid = chat_actors::ids::Mid::random();
    let body = "x".repeat(100);
    let sealed = keys.seal(mid, &body);
    c.bench_function("seal a 100-byte body (AES-256-GCM)", |b| {
        b.iter(|| keys.seal(mid, std::hint::black_box(&body)))
    });
    c.bench_function("open a 100-byte body (AES-256-GCM)", |b| {
        b.iter(|| {
            keys.open(mid, std::hint::black_box(&sealed))
                .map(|s| s.len())
        })
    });
}

criterion_group!(benches, codec, fanout, sealing);
criterion_main!(benches);
