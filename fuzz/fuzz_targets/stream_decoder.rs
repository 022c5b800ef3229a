//! Any bytes into `StreamDecoder`, fed in two or three chunks (the first two input bytes choose
//! where to cut), every item drained after each chunk. The items must be the same as when the
//! bytes arrive in one piece: framing must not depend on TCP segmentation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::{Limits, StreamDecoder, StreamItem};

/// Small limits, so that inputs of a few KiB reach the "too large" paths.
const LIMITS: Limits = Limits {
    max_message_bytes: 2048,
    max_headers: 32,
    max_line_bytes: 512,
};

/// What came out: the items, and whether the stream ended in an error (the connection closes).
fn feed(chunks: &[&[u8]]) -> (Vec<StreamItem>, bool) {
    let mut d = StreamDecoder::new(LIMITS);
    let mut items = Vec::new();
    for chunk in chunks {
        d.extend(chunk);
        loop {
            match d.next_item() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(_) => return (items, true),
            }
        }
    }
    (items, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], bytes)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = bytes.len();
    let mut cut1 = usize::from(a) * len / 255;
    let mut cut2 = usize::from(b) * len / 255;
    if cut1 > cut2 {
        std::mem::swap(&mut cut1, &mut cut2);
    }
    let whole = feed(&[bytes]);
    let chunked = feed(&[&bytes[..cut1], &bytes[cut1..cut2], &bytes[cut2..]]);
    assert_eq!(chunked, whole, "cut at {cut1} and {cut2}");
});
