//! Frames to bytes and back, in MessagePack (string-keyed maps) or JSON (`chat.v1+json`).
//!
//! A push that fans out is wrapped in a [`SharedFrame`]: encoded at most once per wire format,
//! however many sockets it goes to.

use std::sync::OnceLock;

use bytes::Bytes;
use serde::Deserialize;

use super::error_code::Rejection;
use super::frames::{Request, ServerFrame};

/// The two wire formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Binary frames holding MessagePack maps (the default).
    MsgPack,
    /// Text frames holding JSON (subprotocol `chat.v1+json`).
    Json,
}

/// The first allocation of an encoded frame: a message push with a 100-byte body is ~300 bytes.
const ENCODE_CAPACITY: usize = 512;

/// Encodes a server frame. Serializing our own types cannot fail short of a bug, which is logged
/// and answered with an `internal` error frame instead.
pub fn encode_frame(format: Format, frame: &ServerFrame) -> Bytes {
    // Sized for a typical push up front: grown from empty, the buffer was reallocated five to
    // seven times per frame.
    let mut buf = Vec::with_capacity(ENCODE_CAPACITY);
    let out = match format {
        Format::MsgPack => {
            rmp_serde::encode::write_named(&mut buf, frame).map_err(|e| e.to_string())
        }
        Format::Json => serde_json::to_writer(&mut buf, frame).map_err(|e| e.to_string()),
    };
    match out {
        Ok(()) => Bytes::from(buf),
        Err(e) => {
            tracing::error!(error = %e, "a server frame failed to encode");
            Bytes::from_static(br#"{"t":"error","code":"internal","message":"encode"}"#)
        }
    }
}

/// A frame that failed to decode: the rejection, and the request id when one could be read.
#[derive(Debug)]
pub struct DecodeFailure {
    /// The id, when the frame was a map with an unsigned-integer `id`.
    pub id: Option<u64>,
    /// Always `bad_request`.
    pub rejection: Rejection,
}

/// How deep a MessagePack frame may nest. A request nests three levels at most; rmp-serde's own
/// limit (1,024) let a 1 KiB frame recurse deep enough to overflow a 2 MiB thread stack in a
/// debug build. serde_json stops at 128 by itself.
const MAX_MSGPACK_DEPTH: usize = 64;

/// Decodes a client frame in `format`.
pub fn decode_request(format: Format, data: &[u8]) -> Result<Request, DecodeFailure> {
    let parsed = match format {
        Format::MsgPack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(data);
            de.set_max_depth(MAX_MSGPACK_DEPTH);
            Request::deserialize(&mut de).map_err(|e| e.to_string())
        }
        Format::Json => serde_json::from_slice::<Request>(data).map_err(|e| e.to_string()),
    };
    parsed.map_err(|why| DecodeFailure {
        id: probe_id(format, data),
        rejection: Rejection::bad_request(format!("malformed frame: {why}")),
    })
}

/// Reads `id` out of a frame that did not decode as a request: only from a map, only when
/// unsigned. Nothing else in the frame is interpreted, so a bad value anywhere else (binary,
/// extension types, invalid UTF-8, integer keys, deep nesting) does not lose the id.
fn probe_id(format: Format, data: &[u8]) -> Option<u64> {
    match format {
        Format::MsgPack => msgpack_id(data),
        Format::Json => json_id(data),
    }
}

/// `id` of a MessagePack map, read by walking the bytes: every other value is skipped by its
/// length, iteratively, so no nesting depth or content can fail the walk short of running out.
fn msgpack_id(data: &[u8]) -> Option<u64> {
    let mut r = Cursor { data, pos: 0 };
    let entries = match r.byte()? {
        m @ 0x80..=0x8f => u64::from(m & 0x0f),
        0xde => r.be(2)?,
        0xdf => r.be(4)?,
        _ => return None,
    };
    for _ in 0..entries {
        if r.key_is_id()? {
            return r.unsigned();
        }
        r.skip()?;
    }
    None
}

/// A read position in a MessagePack frame.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, n: u64) -> Option<&[u8]> {
        let n = usize::try_from(n).ok()?;
        let end = self.pos.checked_add(n)?;
        let bytes = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    /// A big-endian unsigned integer of `n` bytes.
    fn be(&mut self, n: u64) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    }

    /// Reads a key: true when it is the string `id`; any other key is skipped.
    fn key_is_id(&mut self) -> Option<bool> {
        let len = match *self.data.get(self.pos)? {
            m @ 0xa0..=0xbf => {
                self.pos += 1;
                u64::from(m & 0x1f)
            }
            0xd9 => {
                self.pos += 1;
                self.be(1)?
            }
            0xda => {
                self.pos += 1;
                self.be(2)?
            }
            0xdb => {
                self.pos += 1;
                self.be(4)?
            }
            _ => {
                self.skip()?;
                return Some(false);
            }
        };
        Some(self.take(len)? == b"id")
    }

    /// An unsigned integer (or a non-negative signed one); anything else is no id.
    fn unsigned(&mut self) -> Option<u64> {
        let signed = |v: i64| u64::try_from(v).ok();
        match self.byte()? {
            m @ 0x00..=0x7f => Some(u64::from(m)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            0xd0 => signed(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => signed(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => signed(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => signed(self.be(8)? as i64),
            _ => None,
        }
    }

    /// Skips one value, containers included, without recursion.
    fn skip(&mut self) -> Option<()> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            match self.byte()? {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => {}
                m @ 0x80..=0x8f => pending += 2 * u64::from(m & 0x0f),
                m @ 0x90..=0x9f => pending += u64::from(m & 0x0f),
                m @ 0xa0..=0xbf => {
                    self.take(u64::from(m & 0x1f))?;
                }
                0xc1 => return None,
                // bin 8/16/32 and str 8/16/32: a length of 1, 2 or 4 bytes, then the bytes.
                m @ (0xc4..=0xc6 | 0xd9..=0xdb) => {
                    let width = match m {
                        0xc4 | 0xd9 => 1,
                        0xc5 | 0xda => 2,
                        _ => 4,
                    };
                    let n = self.be(width)?;
                    self.take(n)?;
                }
                m @ 0xc7..=0xc9 => {
                    let n = self.be(1 << (m - 0xc7))?;
                    self.take(n + 1)?;
                }
                0xca => {
                    self.take(4)?;
                }
                0xcb => {
                    self.take(8)?;
                }
                m @ 0xcc..=0xd3 => {
                    self.take(1 << ((m - 0xcc) % 4))?;
                }
                m @ 0xd4..=0xd8 => {
                    self.take(1 + (1 << (m - 0xd4)))?;
                }
                0xdc => pending += self.be(2)?,
                0xdd => pending += self.be(4)?,
                0xde => pending += 2 * self.be(2)?,
                0xdf => pending += 2 * self.be(4)?,
            }
        }
        Some(())
    }
}

/// `id` of a JSON object. The id is kept as soon as it is read, so a value after it that fails
/// (nesting beyond the parser's depth limit) does not lose it.
fn json_id(data: &[u8]) -> Option<u64> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::cell::Cell;

    struct Probe<'c>(&'c Cell<Option<u64>>);
    impl<'de> DeserializeSeed<'de> for Probe<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Probe<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "id" {
                    let v: serde_json::Value = map.next_value()?;
                    self.0.set(v.as_u64());
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(data);
    let _ = Probe(&found).deserialize(&mut de);
    found.get()
}

/// A push shared by every socket it goes to, encoded lazily once per format.
#[derive(Debug)]
pub struct SharedFrame {
    /// The frame, unless it arrived already encoded (from another node).
    frame: Option<ServerFrame>,
    msgpack: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl SharedFrame {
    /// Wraps a frame for fan-out.
    pub fn new(frame: ServerFrame) -> Self {
        SharedFrame {
            frame: Some(frame),
            msgpack: OnceLock::new(),
            json: OnceLock::new(),
        }
    }

    /// A frame another node encoded in MessagePack: sent on as it is; JSON connections get it
    /// transcoded once.
    pub fn from_msgpack(bytes: Bytes) -> Self {
        SharedFrame {
            frame: None,
            msgpack: OnceLock::from(bytes),
            json: OnceLock::new(),
        }
    }

    /// Its bytes in `format`, encoded on first use.
    pub fn bytes(&self, format: Format) -> Bytes {
        let cell = match format {
            Format::MsgPack => &self.msgpack,
            Format::Json => &self.json,
        };
        cell.get_or_init(|| match &self.frame {
            Some(frame) => encode_frame(format, frame),
            None => self.transcoded(),
        })
        .clone()
    }

    /// The JSON of a frame that came as MessagePack, its keys in the order they were written
    /// (`t` first, as in a frame made on this node).
    fn transcoded(&self) -> Bytes {
        let packed = self.msgpack.get().cloned().unwrap_or_default();
        let mut json = Vec::with_capacity(ENCODE_CAPACITY);
        let mut from = rmp_serde::Deserializer::from_read_ref(&packed[..]);
        let mut to = serde_json::Serializer::new(&mut json);
        match serde_transcode::transcode(&mut from, &mut to) {
            Ok(()) => Bytes::from(json),
            Err(_) => {
                tracing::error!("a frame from another node failed to transcode");
                Bytes::from_static(br#"{"t":"error","code":"internal","message":"encode"}"#)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConversationId;

    #[test]
    fn a_frame_from_another_node_reaches_json_clients_as_a_local_one_would() {
        let frame = ServerFrame::Typing {
            conv: ConversationId::random(),
            user: crate::ids::UserId::random(),
            on: true,
        };
        let relayed = SharedFrame::from_msgpack(encode_frame(Format::MsgPack, &frame));
        let json = relayed.bytes(Format::Json);
        assert_eq!(json, encode_frame(Format::Json, &frame));
        assert!(json.starts_with(br#"{"t":"typing""#), "{json:?}");
    }

    #[test]
    fn a_msgpack_send_decodes_with_string_uuids() {
        let conv = ConversationId::random();
        #[derive(serde::Serialize)]
        struct Raw<'a> {
            t: &'a str,
            id: u64,
            conv: String,
            body: &'a str,
        }
        let raw = rmp_serde::to_vec_named(&Raw {
            t: "send",
            id: 7,
            conv: conv.to_string(),
            body: "hi",
        })
        .unwrap();
        match decode_request(Format::MsgPack, &raw).unwrap() {
            Request::Send {
                id,
                conv: c,
                body,
                mid,
                kind,
            } => {
                assert_eq!(
                    (id, c, body.as_str(), mid, kind),
                    (Some(7), conv, "hi", None, None)
                );
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn a_bad_frame_keeps_its_unsigned_id_and_nothing_else() {
        let bad = serde_json::to_vec(&serde_json::json!({"t": "send", "id": 9})).unwrap();
        assert_eq!(decode_request(Format::Json, &bad).unwrap_err().id, Some(9));
        let neg = serde_json::to_vec(&serde_json::json!({"t": "nope", "id": -1})).unwrap();
        assert_eq!(decode_request(Format::Json, &neg).unwrap_err().id, None);
        let arr = rmp_serde::to_vec(&vec![1, 2, 3]).unwrap();
        assert_eq!(decode_request(Format::MsgPack, &arr).unwrap_err().id, None);
    }

    /// A MessagePack map `{"t":"send", <key>: <value>, "id": 42}` written by hand.
    fn map_with(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut m = vec![0x83, 0xa1, b't', 0xa4, b's', b'e', b'n', b'd'];
        m.extend_from_slice(key);
        m.extend_from_slice(value);
        m.extend_from_slice(&[0xa2, b'i', b'd', 42]);
        m
    }

    #[test]
    fn a_bad_value_of_any_type_elsewhere_keeps_the_id() {
        let conv = [0xa4, b'c', b'o', b'n', b'v'];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("binary", map_with(&conv, &[0xc4, 3, 1, 2, 3])),
            ("ext", map_with(&conv, &[0xc7, 2, 5, 9, 9])),
            ("fixext", map_with(&conv, &[0xd6, 1, 0, 0, 0, 0])),
            ("invalid utf-8", map_with(&conv, &[0xa2, 0xff, 0xfe])),
            ("integer key", map_with(&[0x07], &[0xc3])),
            ("float", map_with(&conv, &[0xcb, 0, 0, 0, 0, 0, 0, 0, 0])),
            ("deep nesting", {
                let mut deep = vec![0x91; 5000];
                deep.push(0xc0);
                map_with(&conv, &deep)
            }),
        ];
        for (what, frame) in cases {
            let failure = decode_request(Format::MsgPack, &frame).unwrap_err();
            assert_eq!(failure.id, Some(42), "{what}");
        }
        // A signed encoding of a non-negative id is still that id; a negative one is none.
        let mut signed = vec![0x81, 0xa2, b'i', b'd', 0xd1, 0x01, 0x00];
        assert_eq!(msgpack_id(&signed), Some(256));
        signed[5] = 0xff;
        assert_eq!(msgpack_id(&signed), None);
        // Truncated frames give up instead of reading past the end.
        assert_eq!(msgpack_id(&[0x82, 0xa1, b't', 0xdb, 0xff, 0xff]), None);
    }

    #[test]
    fn a_json_id_before_a_too_deep_value_is_kept() {
        let deep = format!(
            r#"{{"id": 5, "t": "send", "x": {}1{}}}"#,
            "[".repeat(500),
            "]".repeat(500)
        );
        assert_eq!(
            decode_request(Format::Json, deep.as_bytes())
                .unwrap_err()
                .id,
            Some(5)
        );
    }

    #[test]
    fn a_huge_history_limit_is_clamped_not_refused() {
        let conv = ConversationId::random().to_string();
        let frame = serde_json::json!({"t": "history", "id": 1, "conv": conv, "limit": u64::MAX});
        let packed = rmp_serde::to_vec_named(&frame).unwrap();
        match decode_request(Format::MsgPack, &packed).unwrap() {
            Request::History { limit, .. } => assert_eq!(limit, Some(i64::MAX)),
            other => panic!("decoded as {other:?}"),
        }
        let float = serde_json::json!({"t": "history", "id": 1, "conv": conv, "limit": 1.5});
        assert!(decode_request(Format::Json, &serde_json::to_vec(&float).unwrap()).is_err());
    }

    #[test]
    fn server_frames_are_string_keyed_maps_with_a_type() {
        let f = ServerFrame::Ok { id: Some(3) };
        let packed = encode_frame(Format::MsgPack, &f);
        let v: serde_json::Value = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(v, serde_json::json!({"t": "ok", "id": 3}));
        // A shared frame is encoded once per format, and as `encode_frame` would.
        let removed = ServerFrame::Removed {
            conv: ConversationId::random(),
        };
        let shared = SharedFrame::new(removed.clone());
        let first = shared.bytes(Format::Json);
        assert_eq!(first, encode_frame(Format::Json, &removed));
        assert_eq!(
            first.as_ptr(),
            shared.bytes(Format::Json).as_ptr(),
            "encoded twice"
        );
    }
}

/// Property fuzzing of the frame decoder (proptest: cargo-fuzz needs a nightly toolchain, which
/// these machines cannot install). Every case must end in a request or a `bad_request`, never a
/// panic, and a refused map keeps its unsigned `id`. `cargo test` runs a short pass;
/// `PROPTEST_CASES=1000000 cargo test --release -p chat-actors fuzz_` a long one. Failing
/// inputs proptest finds are kept in `proptest-regressions/` next to this file and replayed
/// first on every run.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// JSON-shaped values, nested a few levels: what a confused or hostile client sends.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "\\PC{0,40}".prop_map(Value::String),
            prop_oneof![
                Just("send"),
                Just("history"),
                Just("create"),
                Just("watch"),
                Just("typing"),
                Just("auth"),
                Just("ping"),
                Just("delete"),
                Just("read"),
                Just("transfer"),
            ]
            .prop_map(|t| Value::String(t.to_owned())),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("t".to_owned()),
                        Just("id".to_owned()),
                        Just("conv".to_owned()),
                        Just("body".to_owned()),
                        Just("mid".to_owned()),
                        Just("users".to_owned()),
                        Just("members".to_owned()),
                        Just("limit".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..8,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            for format in [Format::MsgPack, Format::Json] {
                if let Err(e) = decode_request(format, &bytes) {
                    prop_assert_eq!(e.rejection.code, crate::protocol::ErrorCode::BadRequest);
                }
            }
        }

        #[test]
        fn fuzz_any_shaped_frame_decodes_or_is_refused(v in value()) {
            let packed = rmp_serde::to_vec_named(&v).unwrap_or_default();
            let json = serde_json::to_vec(&v).unwrap_or_default();
            for (format, bytes) in [(Format::MsgPack, &packed), (Format::Json, &json)] {
                if let Err(e) = decode_request(format, bytes) {
                    prop_assert_eq!(e.rejection.code, crate::protocol::ErrorCode::BadRequest);
                }
            }
        }

        #[test]
        fn fuzz_a_refused_map_keeps_its_id(id in any::<u64>(), junk in value()) {
            let frame = serde_json::json!({"t": "send", "id": id, "conv": junk, "body": 5});
            for format in [Format::MsgPack, Format::Json] {
                let bytes = match format {
                    Format::MsgPack => rmp_serde::to_vec_named(&frame).unwrap_or_default(),
                    Format::Json => serde_json::to_vec(&frame).unwrap_or_default(),
                };
                let refused = decode_request(format, &bytes);
                prop_assert!(refused.is_err());
                if let Err(e) = refused {
                    prop_assert_eq!(e.id, Some(id));
                }
            }
        }
    }

    /// Replays the AFL++ corpus (`fuzz/corpus/frame_decoder`: inputs that each reached new code
    /// in the coverage-guided runs) through the decoder: the short smoke run of that fuzzer.
    #[test]
    fn fuzz_the_afl_corpus_decodes_or_is_refused() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/frame_decoder");
        let mut replayed = 0;
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let Some((&selector, frame)) = data.split_first() else {
                continue;
            };
            let format = if selector & 1 == 0 {
                Format::MsgPack
            } else {
                Format::Json
            };
            if let Err(e) = decode_request(format, frame) {
                assert_eq!(e.rejection.code, crate::protocol::ErrorCode::BadRequest);
            }
            replayed += 1;
        }
        assert!(replayed >= 30, "only {replayed} corpus entries in {dir}");
    }
}
