//! Meridian's bootstrap edge.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
