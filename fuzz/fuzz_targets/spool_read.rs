#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| usageflow_socket_client::spool::check_reader(data));
