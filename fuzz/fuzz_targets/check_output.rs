//! A whole plugin output, built by `arbitrary`, through the output check and the
//! applier's preparation of each write: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rekon_fuzz::OutputInput;

fuzz_target!(|input: OutputInput| {
    rekon_fuzz::structured_output(&input);
});
