//! The conformance and fault suite against `usageflow-socket-tokio`.

mod tokio_suite {
    usageflow_socket_tests::conformance!(usageflow_socket_tests::TokioAdapter);
}
