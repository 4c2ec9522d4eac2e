//! Shared helpers for Meridian's end-to-end tests (the tests themselves live in `tests/tests/`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
