//! acsgate: a metering reverse proxy for the Azure Communication Services REST APIs.
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
pub mod catalogue;
