//! Build every stage once, each with only the parts it uses, then run the
//! consumer, the periodic digest flush and the HTTP server until the one
//! shutdown token fires (SIGTERM/SIGINT). SIGHUP reloads the serving set.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::broker::Publisher;
use crate::config::Settings;
use crate::consume::Consumer;
use crate::dispatch::Dispatcher;
use crate::dispatch::email::{Letterhead, Mailer};
use crate::flow::{DirectoryCache, Flow};
use crate::http::HttpState;
use crate::serving::{Addresses, Serving};
use crate::store;
use crate::telemetry::Metrics;
use crate::ticker::Ticker;
use crate::{digest, http};

/// Why the worker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Serving(#[from] crate::serving::LoadError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Settings(String),
    #[error("http.addr {addr}: {reason}")]
    Listen { addr: String, reason: std::io::Error },
}

/// The worker's stages, built once.
pub struct App {
    pub settings: Settings,
    pub flow: Arc<Flow>,
    pub shutdown: CancellationToken,
}

impl App {
    /// Loads and checks rules and templates, opens the store, builds the
    /// mailer. Nothing connects to the broker yet.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let addresses = Addresses::from_settings(&settings);
        let serving = Arc::new(Serving::load(&settings.rules.dir, &settings.templates.dir, addresses)?);
        let current = serving.current();
        info!(examples = current.examples, "templates checked");
        info!(rules = current.rules.rules.len(), hash = %current.rules.hash, "rules loaded");
        let metrics = Metrics::new();
        metrics.set_rules(&current.rules.hash);
        let store = store::connect(&settings.store, &settings.archive).await?;
        let dispatcher = Dispatcher {
            store: store.clone(),
            mailer: Mailer::from_settings(&settings.smtp).map_err(StartError::Settings)?,
            letterhead: Letterhead::from_settings(&settings).map_err(StartError::Settings)?,
            publisher: Publisher::default(),
            action_center_exchange: settings.amqp.action_center_exchange.clone(),
            metrics: metrics.clone(),
            lease: settings.store.lease,
        };
        let flow = Arc::new(Flow {
            directory: DirectoryCache::load(&*store).await?,
            store,
            serving,
            dispatcher,
            metrics,
        });
        Ok(Self {
            settings,
            flow,
            shutdown: CancellationToken::new(),
        })
    }

    /// Runs the worker until SIGTERM/SIGINT; returns once in-flight work is
    /// drained (or the drain timeout has passed).
    pub async fn run(self) -> Result<(), StartError> {
        let addr = self.settings.http_addr();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|reason| StartError::Listen {
                addr: self.settings.http.addr.clone(),
                reason,
            })?;
        info!(addr = %self.settings.http.addr, "HTTP listening");
        let publisher = self.flow.dispatcher.publisher.clone();
        let state = HttpState::new(
            &self.flow,
            &self.settings.http,
            publisher.clone(),
            self.shutdown.clone(),
        );
        let server = tokio::spawn(http::serve(state, listener, self.shutdown.clone()));
        tokio::spawn(signals(self.flow.clone(), self.shutdown.clone()));
        if self.settings.archive.enabled() {
            tokio::spawn(prune_archive(
                self.flow.store.clone(),
                self.settings.archive.retention,
                self.shutdown.clone(),
            ));
        }
        let flushing = tokio::spawn(digest::run_periodically(
            self.flow.clone(),
            self.settings.digest.lease,
            self.settings.digest.check_every,
            self.shutdown.clone(),
        ));
        let consumer = Arc::new(Consumer::new(
            self.settings.amqp.clone(),
            self.settings.retry.clone(),
            self.settings.store.lease,
            self.settings.shutdown.drain_timeout,
            self.flow.clone(),
            publisher,
            self.shutdown.clone(),
        ));
        consumer.run().await;
        self.shutdown.cancel();
        // A flush stops before its next group once shutdown fires; the group it is sending, it finishes.
        let _ = flushing.await;
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Err(e))) => error!(error = %e, "HTTP server failed"),
            Err(_) => warn!("the HTTP server did not stop in 5s; leaving it"),
            _ => {}
        }
        info!("stopped");
        Ok(())
    }
}

/// Reloads the serving set; a set that fails its checks is rejected and the
/// serving one stays. Returns the new rules' hash.
pub fn reload(flow: &Flow) -> Result<String, crate::serving::LoadError> {
    let set = flow.serving.reload()?;
    flow.metrics.set_rules(&set.rules.hash);
    Ok(set.rules.hash.clone())
}

/// Forgets archived events older than `retention`, at start and then hourly
/// (more often for a retention under a day).
async fn prune_archive(store: Arc<dyn crate::store::Store>, retention: Duration, shutdown: CancellationToken) {
    let every = (retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut ticker = Ticker::new(every);
    while ticker.tick(&shutdown).await {
        let before = chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(30));
        match store.prune_archive(before).await {
            Ok(0) => {}
            Ok(n) => info!(events = n, "archive pruned"),
            Err(e) => warn!(error = %e, "could not prune the archive; trying again later"),
        }
    }
}

async fn signals(flow: Arc<Flow>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match reload(&flow) {
                Ok(hash) => info!(%hash, "rules reloaded"),
                Err(e) => warn!(error = %e, "reload rejected; the previous rules keep serving"),
            },
            () = shutdown.cancelled() => return,
        }
    }
    info!("shutdown requested");
    shutdown.cancel();
}
