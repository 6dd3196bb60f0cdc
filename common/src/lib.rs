//! Shared adapter glue.
