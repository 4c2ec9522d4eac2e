//! Meridian's MQTT broker.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
