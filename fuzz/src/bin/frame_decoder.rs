//! AFL++ target: the WebSocket frame decoder on any bytes. The first byte picks the format
//! (even: MessagePack, odd: JSON), the rest is the frame. A panic is a finding; a frame that
//! fails must be answered `bad_request`.

use chat_actors::protocol::{ErrorCode, Format, decode_request};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&selector, frame)) = data.split_first() else {
            return;
        };
        let format = if selector & 1 == 0 {
            Format::MsgPack
        } else {
            Format::Json
        };
        if let Err(failure) = decode_request(format, frame) {
            assert_eq!(failure.rejection.code, ErrorCode::BadRequest);
        }
    });
}
