//! Pure protocol logic: parsing and normalizing what requests carry. No I/O; fuzzable.

pub mod go_mux;
pub mod http;
