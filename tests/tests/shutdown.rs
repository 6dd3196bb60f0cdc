//! The shutdown matrix (issue 21) on Tokio and on smol's parts: see
//! `usageflow_socket_tests::shutdown`.

mod tokio_ends {
    usageflow_socket_tests::shutdown_matrix!(usageflow_socket_tests::shutdown::TokioEnds);
}

mod smol_ends {
    usageflow_socket_tests::shutdown_matrix!(usageflow_socket_tests::shutdown::SmolEnds);
}
