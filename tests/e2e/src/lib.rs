//! Support code for vigil's cross-crate integration tests.
