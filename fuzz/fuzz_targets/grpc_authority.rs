//! The :authority rewrite on ipamd's gRPC socket reads client bytes: it never panics, never changes a frame's
//! length, and only ever changes bytes into '-'.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frame = data.to_vec();
    aws_cni_proto::authority::rewrite_headers_frame(&mut frame);
    assert_eq!(frame.len(), data.len());
    for (after, before) in frame.iter().zip(data) {
        assert!(after == before || *after == b'-');
    }
    let mut block = data.to_vec();
    aws_cni_proto::authority::rewrite_header_block(&mut block);
    assert_eq!(block.len(), data.len());
});
