#![no_main]
//! See `cloudmap_mcp::fuzzing::translate` for what is checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cloudmap_mcp::fuzzing::translate(data);
});
