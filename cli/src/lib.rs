//! ufsock library: the local server.
