//! The edge's PROXY protocol v2 reader (`ppp` behind a length cap) on arbitrary connection
//! prefixes.
//!
//! Property beyond "never panics": an accepted header consumes exactly the bytes it announces
//! (16 + its length field), leaving the rest of the stream for HTTP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_edge::proxy_protocol::read_header;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    // `&[u8]` is a reader that never waits, so polling to completion once is enough.
    let result = futures::executor::block_on(read_header(&mut stream));
    if result.is_ok() {
        let announced = 16 + usize::from(u16::from_be_bytes([data[14], data[15]]));
        assert_eq!(data.len() - stream.len(), announced);
    }
});
