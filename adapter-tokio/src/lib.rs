//! Tokio adapter.
