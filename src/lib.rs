//! m365-ingest: pulls Microsoft 365 Defender alerts into a transactional store and forwards each
//! new version to Dropzone AI, at least once, never lost, never twice in normal operation.
//!
//! Layout (design §1, §2):
//! - `config`: settings, defaults, validation. `telemetry`, `shutdown`: logs and signals.
//! - `auth`: Entra ID tokens (`certificate`: certificate credentials). `microsoft`: the one HTTP client for Microsoft (pinning, retries,
//!   throttling, Microsoft's clock).
//! - `sources`: pollers, a file per source, and the coverage scan. `normalize`: Microsoft's
//!   objects to `m365-ingest.alert.v1`. `email`: a reported email (MIME or Outlook .msg) parsed
//!   for triage. `time`: 100-ns ticks. `hunting`: campaign context from advanced hunting (who
//!   else got an email, where it landed, who clicked).
//! - `store`: the `Store` contract and its SQLite and Postgres backends; the only hand-off between
//!   pollers and forwarders. `lease`: which replica runs what (design §10).
//! - `forward`: batches to Dropzone. `server`: `/healthz`, `/readyz`, `/status`, `/metrics`;
//!   `metrics`: the Prometheus names and the process's recorder.
//! - `app`: wiring. `cli`: the commands, including `demo`.

pub mod admin;
pub mod allocator;
pub mod app;
pub mod auth;
pub mod certificate;
pub mod check;
pub mod cli;
pub mod config;
pub mod email;
pub mod forward;
pub mod hunting;
pub mod lease;
pub mod metrics;
pub mod microsoft;
pub mod normalize;
pub mod server;
pub mod shutdown;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod time;

/// The store backend the daemon runs on.
pub type AppStore = store::AnyStore;
