//! The conformance and fault suite against `usageflow-socket-smol`.

mod smol_suite {
    usageflow_socket_tests::conformance!(usageflow_socket_tests::SmolAdapter);
}
