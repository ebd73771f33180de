//! A `rekon test` fixture case file through the case parser: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        rekon_fuzz::case_text(text);
    }
});
