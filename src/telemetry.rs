//! Logging: one JSON object per line (or a readable format), filtered by `log.level` unless
//! `RUST_LOG` is set. The writer is injectable so tests can read what would have been logged.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},sqlx=warn,hyper=warn,reqwest=warn")))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// A subscriber writing to `writer`; `init` installs one on stdout.
pub fn subscriber<W>(cfg: &LogConfig, writer: W) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(&cfg.level))
        .with_writer(writer);
    match cfg.format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
        LogFormat::Pretty => Box::new(builder.compact().finish()),
    }
}

/// Installs the process-wide subscriber; a second call is a no-op.
pub fn init(cfg: &LogConfig) {
    let _ = tracing::subscriber::set_global_default(subscriber(cfg, std::io::stdout));
}
