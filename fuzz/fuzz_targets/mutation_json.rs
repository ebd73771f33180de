//! The JSON text of one mutation's object or patch, under every verb and primary scope,
//! through the output check and the applier's preparation: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        rekon_fuzz::mutation_text(text);
    }
});
