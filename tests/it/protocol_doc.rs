//! docs/PROTOCOL.md stays true: every client example decodes with the node's own decoder (as
//! JSON and as MessagePack), and every server example is exactly what the node's own encoder
//! writes for the same values.

use chat_actors::protocol::encode::{Format, decode_request, encode_frame};
use chat_actors::protocol::frames::ByeReason;
use chat_actors::protocol::{ConversationObject, MessageObject, PresenceItem, ServerFrame};
use serde::de::DeserializeOwned;
use serde_json::Value;

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// The JSON of every code block fenced as "```json TAG".
fn examples(tag: &str) -> Vec<Value> {
    let fence = format!("```json {tag}");
    let mut out = Vec::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        if line.trim() == fence {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let text = block.join("\n");
            let value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("not JSON ({e}) in docs/PROTOCOL.md:\n{text}"));
            out.push(value);
        }
    }
    out
}

fn field<T: DeserializeOwned>(frame: &Value, key: &str) -> T {
    serde_json::from_value(frame[key].clone()).unwrap_or_else(|e| panic!("`{key}` of {frame}: {e}"))
}

fn id(frame: &Value) -> Option<u64> {
    frame.get("id").and_then(Value::as_u64)
}

/// The server frame the node would build from `example`'s values.
fn rebuild(example: &Value) -> ServerFrame {
    let f = example;
    match f["t"].as_str().unwrap_or_default() {
        "hello" => ServerFrame::Hello {
            user: field(f, "user"),
            session: field(f, "session"),
            node: field(f, "node"),
            heartbeat_ms: field(f, "heartbeat_ms"),
            time: field(f, "time"),
        },
        "pong" => ServerFrame::Pong { id: id(f) },
        "ok" => ServerFrame::Ok { id: id(f) },
        "error" => ServerFrame::Error {
            id: id(f),
            code: field(f, "code"),
            message: field(f, "message"),
        },
        "sent" => ServerFrame::Sent {
            id: id(f),
            conv: field(f, "conv"),
            mid: field(f, "mid"),
            seq: field(f, "seq"),
            at: field(f, "at"),
        },
        "history" => ServerFrame::History {
            id: id(f),
            conv: field(f, "conv"),
            messages: field::<Vec<MessageObject>>(f, "messages"),
            more: field(f, "more"),
        },
        "conversation" => ServerFrame::Conversation {
            id: id(f),
            conversation: Box::new(field::<ConversationObject>(f, "conversation")),
        },
        "conversations" => ServerFrame::Conversations {
            id: id(f),
            items: field(f, "items"),
            more: field(f, "more"),
        },
        "presence" if f.get("id").is_some() => ServerFrame::PresenceReply {
            id: id(f),
            items: field::<Vec<PresenceItem>>(f, "items"),
        },
        "presence" => ServerFrame::PresencePush {
            user: field(f, "user"),
            status: field(f, "status"),
        },
        "message" => {
            let mut object = f.clone();
            if let Some(map) = object.as_object_mut() {
                map.remove("t");
            }
            ServerFrame::Message(serde_json::from_value(object).unwrap())
        }
        "receipt" => ServerFrame::Receipt {
            conv: field(f, "conv"),
            user: field(f, "user"),
            seq: field(f, "seq"),
        },
        "typing" => ServerFrame::Typing {
            conv: field(f, "conv"),
            user: field(f, "user"),
            on: field(f, "on"),
        },
        "deleted" => ServerFrame::Deleted {
            conv: field(f, "conv"),
            mid: field(f, "mid"),
            seq: field(f, "seq"),
        },
        "removed" => ServerFrame::Removed {
            conv: field(f, "conv"),
        },
        "bye" => ServerFrame::Bye {
            reason: match f["reason"].as_str() {
                Some("token_expired") => ByeReason::TokenExpired,
                Some("shutdown") => ByeReason::Shutdown,
                Some("slow_consumer") => ByeReason::SlowConsumer,
                Some("policy") => ByeReason::Policy,
                other => panic!("no bye reason {other:?}"),
            },
        },
        other => panic!("docs/PROTOCOL.md shows a server frame `{other}` the node does not have"),
    }
}

#[test]
fn every_client_example_in_the_protocol_doc_decodes() {
    let examples = examples("client");
    let mut kinds: Vec<&str> = examples.iter().filter_map(|e| e["t"].as_str()).collect();
    for example in &examples {
        let json = serde_json::to_vec(example).unwrap();
        if let Err(e) = decode_request(Format::Json, &json) {
            panic!("{example}: {}", e.rejection.message);
        }
        let packed = rmp_serde::to_vec_named(example).unwrap();
        if let Err(e) = decode_request(Format::MsgPack, &packed) {
            panic!("{example} as MessagePack: {}", e.rejection.message);
        }
    }
    // Every request a client can make is shown.
    kinds.sort_unstable();
    kinds.dedup();
    let all = [
        "add_member",
        "auth",
        "conversations",
        "create",
        "delete",
        "get",
        "history",
        "mute",
        "ping",
        "presence",
        "read",
        "remove_member",
        "send",
        "transfer",
        "typing",
        "watch",
    ];
    assert_eq!(kinds, all, "requests shown in docs/PROTOCOL.md");
}

#[test]
fn every_server_example_in_the_protocol_doc_is_what_the_node_writes() {
    let examples = examples("server");
    assert!(examples.len() >= 15, "{} server examples", examples.len());
    for example in &examples {
        let written = encode_frame(Format::Json, &rebuild(example));
        let written: Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(
            &written, example,
            "docs/PROTOCOL.md shows a frame the node writes differently"
        );
    }
}
