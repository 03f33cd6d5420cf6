//! Black-box tests of the simulator over HTTP, one module per concept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod alerts;
mod certificates;
mod cloud_apps;
mod control;
mod dropzone;
mod faults;
mod hunting;
mod incidents;
mod mailbox;
mod submissions;
mod tls;
mod token;
