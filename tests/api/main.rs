//! Black-box tests of the daemon against the simulator: one binary, a file per concern.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod budget;
mod certificates;
mod check;
mod context;
mod contract;
mod delivery;
mod delivery_refusals;
mod faults;
mod helpers;
mod hunting;
mod metrics;
mod operators;
mod paging;
#[path = "../common/pg.rs"]
mod pg;
mod phishing;
mod pipeline;
mod pollers;
mod replicas;
mod sources;
mod tenants;
