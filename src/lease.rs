//! Which replica runs what (design §10): one keeper task per lease takes and renews it in the
//! store and keeps a local gate that pollers and forwarders consult before they work. The
//! database fences every write; the gate's local deadline keeps a replica from starting work it
//! could not finish before another replica may take over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::LeaseConfig;
use crate::store::Store;
use crate::AppStore;

/// The smallest lease time left with which a send is still started.
const MIN_SEND_WINDOW: Duration = Duration::from_secs(2);

/// A lease as this replica sees it.
pub struct LeaseGate {
    name: String,
    /// `None`: a single-process store, where every lease is ours for good.
    deadline: Option<Mutex<Option<Instant>>>,
}

impl LeaseGate {
    /// A lease that is always held (SQLite: one process per file).
    pub fn always(name: String) -> Arc<Self> {
        Arc::new(Self {
            name,
            deadline: None,
        })
    }

    /// A lease that is held only while its keeper renews it.
    pub fn coordinated(name: String) -> Arc<Self> {
        Arc::new(Self {
            name,
            deadline: Some(Mutex::new(None)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long this replica may still act on the lease; `None` when it is held for good.
    pub fn remaining(&self) -> Option<Duration> {
        let Some(d) = &self.deadline else {
            return None;
        };
        let g = match d.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        Some(g.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        }))
    }

    pub fn held(&self) -> bool {
        self.remaining().is_none_or(|r| !r.is_zero())
    }

    /// The timeout a send may use: the configured one, cut to the lease time left, or `None`
    /// when too little is left to start one (design §10: sends cannot be fenced by the
    /// database, so they must end before another replica may take over).
    pub fn send_window(&self, timeout: Duration) -> Option<Duration> {
        match self.remaining() {
            None => Some(timeout),
            Some(r) if r >= MIN_SEND_WINDOW => Some(timeout.min(r)),
            Some(_) => None,
        }
    }

    /// `held` or `standby`, for `/status`.
    pub fn describe(&self) -> &'static str {
        if self.held() {
            "held"
        } else {
            "standby"
        }
    }

    fn set(&self, until: Option<Instant>) {
        if let Some(d) = &self.deadline {
            let mut g = match d.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            *g = until;
        }
    }

    /// Waits until the lease is held or `stop` fires; `false` on stop.
    pub async fn wait_held(&self, stop: &CancellationToken) -> bool {
        while !self.held() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.cancelled() => return false,
            }
        }
        true
    }
}

/// Takes and renews `gate`'s lease every `renew` until `stop`. The local deadline is one renew
/// period short of the expiry the database sets, measured from before the request: monotonic
/// time here and the database's clock elsewhere never need to agree closely.
pub async fn keep(
    store: Arc<AppStore>,
    gate: Arc<LeaseGate>,
    cfg: LeaseConfig,
    stop: CancellationToken,
) {
    let margin = cfg.ttl.saturating_sub(cfg.renew);
    let mut was_held = false;
    loop {
        let asked = Instant::now();
        match store.lease(gate.name(), cfg.ttl).await {
            Ok(true) => {
                gate.set(Some(asked + margin));
                if !was_held {
                    tracing::info!(lease = gate.name(), "this replica now runs this work");
                }
                was_held = true;
            }
            Ok(false) => {
                gate.set(None);
                if was_held {
                    tracing::warn!(
                        lease = gate.name(),
                        "lease held by another replica: standing by"
                    );
                }
                was_held = false;
            }
            // The gate closes by itself at its deadline if the store stays away.
            Err(e) => {
                tracing::warn!(lease = gate.name(), error = %e, "lease renewal failed; will retry")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_coordinated_gate_is_closed_until_set_and_reopens_only_before_its_deadline() {
        let gate = LeaseGate::coordinated("tenant:a".into());
        assert!(!gate.held());
        assert_eq!(gate.send_window(Duration::from_secs(30)), None);
        gate.set(Some(Instant::now() + Duration::from_secs(10)));
        assert!(gate.held());
        let w = gate.send_window(Duration::from_secs(30)).unwrap();
        assert!(
            w <= Duration::from_secs(10) && w > Duration::from_secs(8),
            "{w:?}"
        );
        assert_eq!(
            gate.send_window(Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
        gate.set(Some(Instant::now() + Duration::from_secs(1)));
        assert!(gate.held());
        assert_eq!(
            gate.send_window(Duration::from_secs(30)),
            None,
            "too little left"
        );
        gate.set(Some(Instant::now()));
        assert!(!gate.held());
    }

    #[test]
    fn an_always_gate_is_held_and_keeps_the_configured_timeout() {
        let gate = LeaseGate::always("forward:default".into());
        assert!(gate.held());
        assert_eq!(
            gate.send_window(Duration::from_secs(30)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(gate.describe(), "held");
    }
}
