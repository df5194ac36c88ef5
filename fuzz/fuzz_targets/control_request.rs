//! Any bytes as the body of a control request frame: no panic, and whatever decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = orbit_fuzz::check_control_request(body);
});
