#![no_main]
//! See `cloudmap_mcp::fuzzing::registry_file` for what is checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cloudmap_mcp::fuzzing::registry_file(data);
});
