//! Any bytes as the body of a data stream frame: the zero-copy and owned decoders agree, a
//! chunk's payload is borrowed from the frame, whatever decodes round-trips, and the chunk header
//! fast path matches the full encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = orbit_fuzz::check_data_frame(body);
});
