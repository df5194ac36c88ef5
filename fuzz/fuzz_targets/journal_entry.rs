//! A journal entry as a restart reads it back from the state directory (agent/src/journal.rs):
//! any bytes, under its own transfer's file name or under another. Checks that what the check
//! keeps is confined: a temporary file name that is a plain `.orbit-*.part` name, never a path,
//! and a target that is a clean absolute path; and that a kept entry, written out again, reads
//! back to the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (own_name, body) = match data.split_first() {
        Some((first, rest)) => (first & 1 == 0, rest),
        None => (true, data),
    };
    let name = (!own_name).then_some("0000000000000001.json");
    let Ok((id, part, target, again)) = orbit_agent::fuzzing::journal_entry(body, name) else {
        return;
    };
    assert!(
        part.starts_with(&format!(".orbit-{id}-")) && part.ends_with(".part"),
        "{part:?}"
    );
    assert!(!part.contains('/') && !part.contains('\0'), "{part:?}");
    assert!(target.starts_with('/'), "{target:?}");
    assert!(
        !target.split('/').any(|c| c == ".." || c == "."),
        "{target:?}"
    );
    assert!(!target.contains('\0'), "{target:?}");
    let (id2, part2, target2, again2) =
        orbit_agent::fuzzing::journal_entry(&again, name).expect("a kept entry reads back");
    assert_eq!((id, &part, &target, &again), (id2, &part2, &target2, &again2));
});
