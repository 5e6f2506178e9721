//! Frames to bytes and back, in MessagePack (string-keyed maps) or JSON (`chat.v1+json`).
//!
//! A push that fans out is wrapped in a [`SharedFrame`]: encoded at most once per wire format,
//! however many sockets it goes to.

use std::sync::OnceLock;

use bytes::Bytes;

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

/// Decodes a client frame in `format`.
pub fn decode_request(format: Format, data: &[u8]) -> Result<Request, DecodeFailure> {
    let parsed = match format {
        Format::MsgPack => rmp_serde::from_slice::<Request>(data).map_err(|e| e.to_string()),
        Format::Json => serde_json::from_slice::<Request>(data).map_err(|e| e.to_string()),
    };
    parsed.map_err(|why| DecodeFailure {
        id: probe_id(format, data),
        rejection: Rejection::bad_request(format!("malformed frame: {why}")),
    })
}

/// Reads `id` out of a frame that did not decode as a request: only from a map, only when unsigned.
fn probe_id(format: Format, data: &[u8]) -> Option<u64> {
    let value: serde_json::Value = match format {
        Format::MsgPack => rmp_serde::from_slice(data).ok()?,
        Format::Json => serde_json::from_slice(data).ok()?,
    };
    value.as_object()?.get("id")?.as_u64()
}

/// A push shared by every socket it goes to, encoded lazily once per format.
#[derive(Debug)]
pub struct SharedFrame {
    frame: ServerFrame,
    msgpack: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl SharedFrame {
    /// Wraps a frame for fan-out.
    pub fn new(frame: ServerFrame) -> Self {
        SharedFrame {
            frame,
            msgpack: OnceLock::new(),
            json: OnceLock::new(),
        }
    }
    /// Its bytes in `format`, encoded on first use.
    pub fn bytes(&self, format: Format) -> Bytes {
        let cell = match format {
            Format::MsgPack => &self.msgpack,
            Format::Json => &self.json,
        };
        cell.get_or_init(|| encode_frame(format, &self.frame))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConversationId;

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

    #[test]
    fn server_frames_are_string_keyed_maps_with_a_type() {
        let f = ServerFrame::Ok { id: Some(3) };
        let packed = encode_frame(Format::MsgPack, &f);
        let v: serde_json::Value = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(v, serde_json::json!({"t": "ok", "id": 3}));
        let shared = SharedFrame::new(ServerFrame::Removed {
            conv: ConversationId::random(),
        });
        assert_eq!(shared.bytes(Format::Json), shared.bytes(Format::Json));
    }
}
