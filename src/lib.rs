//! acsgate: a metering reverse proxy for the Azure Communication Services (ACS) REST APIs.
//!
//! Every request is named after its ACS operation by the [`catalogue`], forwarded to the
//! upstream ACS endpoint by the [`proxy`], and recorded exactly once in Prometheus
//! [`metrics`] served by the [`admin`] listener. [`server::Gateway`] wires it together.
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

pub mod access;
pub mod admin;
pub mod admission;
pub mod auth;
pub mod body_rate;
pub mod breaker;
pub mod catalogue;
pub mod classify;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod events;
mod head_timeout;
pub mod healthcheck;
pub mod linger;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod tls;
pub mod write_stall;
