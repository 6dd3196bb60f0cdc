#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| usageflow_socket_core::fuzzing::pool_ops(data));
