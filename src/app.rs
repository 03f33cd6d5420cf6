//! Wiring: `App::build` does every fallible step (store, HTTP clients, token providers, pollers,
//! forwarders, the health listener) and `run_until_stopped` runs them until the stop token fires,
//! then drains within the grace period. Dropping the run future aborts every task, which is how
//! tests simulate a crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::{graph_scope, Credentials, TokenProvider};
use crate::config::Settings;
use crate::forward::{DestinationStatus, DropzoneSink, Forwarder};
use crate::hunting::enrich::{ContextStatus, Enricher};
use crate::hunting::HuntingClient;
use crate::lease::LeaseGate;
use crate::microsoft::{Budget, MicrosoftClock, MsClient};
use crate::normalize::SourceKind;
use crate::server::CredentialExpiry;
use crate::server::{Health, TenantHealth};
use crate::sources::{Poller, SourceStatus};
use crate::store::{destination_lease, tenant_lease, BatchLimits, TenantRef};
use crate::AppStore;

/// Page bodies held in memory at once across all pollers (design §10).
const PAGES_IN_MEMORY: usize = 4;

pub struct App {
    settings: Settings,
    listener: TcpListener,
    health: Arc<Health>,
    stop: CancellationToken,
    pollers: Vec<Poller>,
    forwarders: Vec<Forwarder>,
    enrichers: Vec<Enricher>,
    store: Arc<AppStore>,
    /// Leases kept by this replica when several share a Postgres store (design §10).
    gates: Vec<Arc<LeaseGate>>,
}

/// The User-Agent on every request we make.
/// Requests Outlook allows in flight per app and mailbox (API.md §2).
const MAIL_CONCURRENCY: usize = 4;

pub fn user_agent() -> String {
    format!("m365-ingest/{}", env!("CARGO_PKG_VERSION"))
}

/// An HTTP client that never follows redirects: a redirect could carry a bearer token elsewhere.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent())
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        // Settings built in code (tests, embedders) get the same checks as a loaded file.
        settings.validate()?;
        // Installed before anything records: metrics recorded earlier would be lost.
        crate::metrics::handle();
        let store = Arc::new(
            crate::store::open(&settings.store)
                .await
                .context("opening the store")?,
        );
        let ms_http = http_client(Duration::from_secs(120))?;
        let dz_http = http_client(Duration::from_secs(300))?;
        // A hunting query may run 3 minutes; the client gives up on it itself just after.
        let hunting_http = http_client(crate::hunting::REQUEST_TIMEOUT + Duration::from_secs(10))?;
        let stop = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let pages = Arc::new(Semaphore::new(PAGES_IN_MEMORY));
        // With Postgres several replicas may run: each lease's work runs on one of them.
        let coordinated = matches!(*store, crate::store::AnyStore::Postgres(_));
        let mut gates = Vec::new();
        let mut gate_for = |lease: String| {
            let gate = if coordinated {
                LeaseGate::coordinated(lease)
            } else {
                LeaseGate::always(lease)
            };
            if coordinated {
                gates.push(gate.clone());
            }
            gate
        };

        let mut pollers = Vec::new();
        let mut enrichers = Vec::new();
        let mut tenants_health = Vec::new();
        let mut destinations: BTreeMap<
            String,
            (
                Arc<DestinationStatus>,
                Vec<String>,
                crate::config::ForwardConfig,
            ),
        > = BTreeMap::new();
        for (name, tenant) in &settings.tenants {
            let tref = TenantRef {
                name: name.clone(),
                id: tenant.tenant_id.trim().to_ascii_lowercase(),
            };
            let (dest_name, fwd) = settings
                .destination_for(name)
                .context("a tenant without a destination passed validation")?;
            let dest = destinations.entry(dest_name.clone()).or_insert_with(|| {
                (
                    Arc::new(DestinationStatus::default()),
                    Vec::new(),
                    fwd.clone(),
                )
            });
            dest.1.push(name.clone());
            let graph_tokens = Arc::new(TokenProvider::new(
                Credentials::of_tenant(name, tenant).map_err(anyhow::Error::msg)?,
                graph_scope(&tenant.effective_graph_url()),
                ms_http.clone(),
            ));
            let tenant_gate = gate_for(tenant_lease(name));
            let clock = Arc::new(MicrosoftClock::default());
            let graph_budget = Arc::new(Budget::per_minute(tenant.graph_requests_per_minute));
            let graph = Arc::new(
                MsClient::new(
                    "graph",
                    name.clone(),
                    ms_http.clone(),
                    &tenant.effective_graph_url(),
                    graph_tokens.clone(),
                    graph_budget.clone(),
                    clock.clone(),
                )
                .with_context(|| format!("tenants.{name}.graph_url is not a URL"))?,
            );
            // Campaign context: one hunting client and one enrichment task per tenant with it
            // on; the pollers make new email alerts wait for it and wake the task.
            let context = if tenant.context.hunting {
                let client = HuntingClient::new(
                    name,
                    &tenant.effective_graph_url(),
                    hunting_http.clone(),
                    graph_tokens.clone(),
                    clock.clone(),
                    Some(graph_budget.clone()),
                    &tenant.context,
                )
                .with_context(|| format!("tenants.{name}.graph_url is not a URL"))?;
                let status = Arc::new(ContextStatus::default());
                let enrich_wake = Arc::new(Notify::new());
                crate::metrics::register_context(name);
                enrichers.push(Enricher {
                    tenant: tref.clone(),
                    client: Arc::new(client),
                    store: store.clone(),
                    status: status.clone(),
                    wake: enrich_wake.clone(),
                    forward: wake.clone(),
                    gate: tenant_gate.clone(),
                    max_delay: tenant.context.max_delay,
                });
                Some((status, enrich_wake))
            } else {
                None
            };
            crate::metrics::register_api(name, "graph");
            let mut tokens = vec![graph_tokens.clone()];
            // Cloud Apps is its own API family: its own token scope, host and 30/min budget.
            let cloud_apps = match &tenant.cloud_apps_url {
                Some(url) => {
                    let provider = Arc::new(TokenProvider::new(
                        Credentials::of_tenant(name, tenant).map_err(anyhow::Error::msg)?,
                        crate::auth::CLOUD_APPS_SCOPE.to_string(),
                        ms_http.clone(),
                    ));
                    tokens.push(provider.clone());
                    crate::metrics::register_api(name, "cloud_apps");
                    Some(Arc::new(
                        MsClient::new(
                            "cloud_apps",
                            name.clone(),
                            ms_http.clone(),
                            url.trim_end_matches('/'),
                            provider,
                            Arc::new(Budget::per_minute(tenant.cloud_apps_requests_per_minute)),
                            // One Microsoft clock per tenant, whichever API last sent a Date.
                            clock.clone(),
                        )
                        .with_context(|| format!("tenants.{name}.cloud_apps_url is not a URL"))?,
                    ))
                }
                None => None,
            };
            // Outlook's own budget, per app and mailbox: 10,000 requests per 10 minutes and 4
            // at once (API.md §2); the mailbox source is the only one on it.
            let mail = if tenant
                .sources
                .get(SourceKind::PhishingReports)
                .resolve(SourceKind::PhishingReports, tenant)
                .enabled
            {
                crate::metrics::register_api(name, "mail");
                Some(Arc::new(
                    MsClient::new(
                        "mail",
                        name.clone(),
                        ms_http.clone(),
                        &tenant.effective_graph_url(),
                        graph_tokens.clone(),
                        Arc::new(Budget::per_minute(tenant.mail_requests_per_minute)),
                        clock.clone(),
                    )
                    .with_context(|| format!("tenants.{name}.graph_url is not a URL"))?
                    .with_concurrency(MAIL_CONCURRENCY),
                ))
            } else {
                None
            };
            let mut sources = Vec::new();
            for kind in SourceKind::ALL {
                let s = tenant.sources.get(kind).resolve(kind, tenant);
                if !s.enabled {
                    continue;
                }
                let client = match kind {
                    SourceKind::CloudApps => match &cloud_apps {
                        Some(c) => c.clone(),
                        None => continue,
                    },
                    SourceKind::PhishingReports => match &mail {
                        Some(c) => c.clone(),
                        None => continue,
                    },
                    _ => graph.clone(),
                };
                let status = Arc::new(SourceStatus::new(s.interval));
                crate::metrics::register_source(name, kind.as_str());
                sources.push((kind, status.clone()));
                let mut poller = Poller::new(
                    tref.clone(),
                    s,
                    tenant.start,
                    client,
                    store.clone(),
                    status,
                    settings.store.max_pending,
                    pages.clone(),
                )
                .with_wake(wake.clone())
                .with_gate(tenant_gate.clone());
                if let Some((_, enrich_wake)) = &context {
                    poller = poller.with_context(tenant.context.max_delay, enrich_wake.clone());
                }
                pollers.push(poller);
            }
            tenants_health.push(TenantHealth {
                name: name.clone(),
                tenant_id: tref.id.clone(),
                destination: dest_name,
                sources,
                tokens,
                gate: tenant_gate,
                credential_expires: CredentialExpiry::of_tenant(tenant),
                context: context.map(|(status, _)| status),
            });
        }
        let mut forwarders = Vec::new();
        let mut dest_health = Vec::new();
        for (name, (status, tenants, cfg)) in destinations {
            let gate = gate_for(destination_lease(&name));
            dest_health.push((name.clone(), status.clone(), gate.clone()));
            for tenant in &tenants {
                crate::metrics::register_destination(&name, tenant);
            }
            forwarders.push(Forwarder {
                name,
                sink: Arc::new(DropzoneSink::new(dz_http.clone(), &cfg)),
                store: store.clone(),
                tenants,
                limits: BatchLimits {
                    max_rows: cfg.batch_size,
                    max_bytes: cfg.max_batch_bytes,
                },
                concurrency: cfg.concurrency,
                status,
                wake: wake.clone(),
                gate,
            });
        }
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| {
                format!(
                    "binding server.listen {} (is another process using it?)",
                    settings.server.listen
                )
            })?;
        let health = Arc::new(Health {
            store: store.clone(),
            tenants: tenants_health,
            destinations: dest_health,
            readyz_requires: settings.server.readyz_requires,
            status_token: settings.server.status_token.clone(),
            started: tokio::time::Instant::now(),
        });
        Ok(App {
            settings,
            listener,
            health,
            stop,
            pollers,
            forwarders,
            enrichers,
            store,
            gates,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    pub fn store(&self) -> Arc<AppStore> {
        self.store.clone()
    }

    /// Cancelling this token starts a graceful stop.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let App {
            settings,
            listener,
            health,
            stop,
            pollers,
            forwarders,
            enrichers,
            store,
            gates,
        } = self;
        // Leases are renewed until in-flight work has drained, then let go for a standby.
        let keepers_stop = CancellationToken::new();
        let mut keepers = JoinSet::new();
        for gate in gates.iter().cloned() {
            let span = tracing::info_span!("lease", lease = gate.name());
            keepers.spawn(
                crate::lease::keep(
                    store.clone(),
                    gate,
                    settings.leases.clone(),
                    keepers_stop.clone(),
                )
                .instrument(span),
            );
        }
        let mut tasks = JoinSet::new();
        for poller in pollers {
            let span = tracing::info_span!("poller", tenant = %poller.tenant.name, source = poller.settings.kind.as_str());
            tasks.spawn(poller.run(stop.clone()).instrument(span));
        }
        for e in enrichers {
            let span = tracing::info_span!("context", tenant = %e.tenant.name);
            tasks.spawn(e.run(stop.clone()).instrument(span));
        }
        for fwd in forwarders {
            let span = tracing::info_span!("forwarder", destination = %fwd.name);
            tasks.spawn(fwd.run(stop.clone()).instrument(span));
        }
        tasks.spawn(secret_watch(health.clone(), stop.clone()));
        tasks.spawn(prune_loop(
            store.clone(),
            settings.store.retention,
            settings.store.dedup_retention,
            stop.clone(),
        ));
        tasks.spawn(crate::metrics::upkeep(stop.clone()));
        let listen = settings.server.listen;
        if settings.server.status_token.is_none() && !listen.ip().is_loopback() {
            tracing::warn!(listen = %listen, "/status and /metrics are readable by anyone who can reach {listen}; set server.status_token");
        }
        let router = crate::server::router(health);
        let server_stop = stop.clone();
        tasks.spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { server_stop.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "health server failed");
            }
        });
        tracing::info!(tenants = settings.tenants.len(), "m365-ingest running");
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(ended) = tasks.join_next() => {
                    // Tasks end only on stop; anything else is a bug worth shouting about.
                    if let Err(e) = ended {
                        tracing::error!(error = %e, "a task of the daemon died; the rest go on");
                    }
                }
            }
        }
        let grace = settings.server.shutdown_grace;
        tracing::info!(
            grace_s = grace.as_secs(),
            "stopping: finishing in-flight work"
        );
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        match drained {
            Ok(()) => tracing::info!("stopped cleanly"),
            Err(_) => {
                // Abandoned batches stay committed and are sent again with the same key.
                tracing::warn!("grace period over: abandoning in-flight work");
                tasks.abort_all();
            }
        }
        keepers_stop.cancel();
        while keepers.join_next().await.is_some() {}
        if !gates.is_empty() {
            use crate::store::Store;
            if let Err(e) = store.release_leases().await {
                tracing::warn!(error = %e, "could not release the leases; a standby takes over when they expire");
            }
        }
        Ok(())
    }
}

/// Logs, once a day, each client secret or certificate that expires within 30 days or has expired.
async fn secret_watch(health: Arc<Health>, stop: CancellationToken) {
    loop {
        let now = crate::time::unix_seconds_now();
        for t in &health.tenants {
            if let Some(why) = t
                .credential_expires
                .and_then(|c| crate::server::expiry_warning(&t.name, c, now))
            {
                tracing::warn!(tenant = %t.name, "{why}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(86_400)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Deletes delivered bodies after `retention` and dedup state after `dedup_retention`, hourly.
async fn prune_loop(
    store: Arc<AppStore>,
    retention: Duration,
    dedup_retention: Duration,
    stop: CancellationToken,
) {
    use crate::store::Store;
    loop {
        let now = crate::store::now_ms();
        match store
            .prune(
                now - retention.as_millis() as i64,
                now - dedup_retention.as_millis() as i64,
            )
            .await
        {
            Ok(n) if n > 0 => {
                tracing::info!(rows = n, "pruned delivered bodies and old dedup state")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning failed; will try again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.cancelled() => return,
        }
    }
}
