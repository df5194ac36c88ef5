//! Any bytes as a whole stream of frames of one kind (the first byte picks which): length
//! prefixes are checked against the stream's cap before a body is taken, truncation and trailing
//! bytes are refused, and the re-encoded frames read back to the same messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orbit_fuzz::{
    check_control_event, check_control_request, check_data_frame, check_read_request, check_stream,
};
use orbit_wire::{MAX_CONTROL_FRAME, MAX_DATA_FRAME};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, stream)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => check_stream(stream, MAX_CONTROL_FRAME, check_control_request),
        1 => check_stream(stream, MAX_CONTROL_FRAME, check_control_event),
        2 => check_stream(stream, MAX_CONTROL_FRAME, check_read_request),
        _ => check_stream(stream, MAX_DATA_FRAME, check_data_frame),
    }
});
