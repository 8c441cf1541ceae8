//! Build everything once, then run the consumer and the HTTP server until the
//! one shutdown token fires (SIGTERM/SIGINT). SIGHUP reloads rules and templates.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::broker::Publisher;
use crate::config::Settings;
use crate::directory::Directory;
use crate::dispatch::email::Mailer;
use crate::render::{Sender, Templates};
use crate::route::RuleSet;
use crate::store::{self, Store, StoreError};
use crate::telemetry::Metrics;
use crate::{consume, http};

/// The rule set and the templates checked against it; swapped together on reload.
pub struct Active {
    pub rules: Arc<RuleSet>,
    pub templates: Arc<Templates>,
}

/// Everything the flow shares.
pub struct App {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub mailer: Mailer,
    pub publisher: Publisher,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    /// Directory events hold it exclusively, everything else shared, taken in
    /// queue order: a directory change is applied before later events route.
    pub order: Arc<tokio::sync::RwLock<()>>,
    /// Who the router's email comes from (validated at start).
    pub sender: Sender,
    active: RwLock<Arc<Active>>,
    /// The store's directory as of sequence number `directory_seq`; refreshed
    /// per event, so changes recorded by other workers are seen too.
    directory: RwLock<Directory>,
    directory_seq: AtomicI64,
    /// Serialises applying directory changes, so they apply in sequence order.
    directory_apply: tokio::sync::Mutex<()>,
    in_flight: Mutex<HashSet<String>>,
}

/// Held while an event is processed; a redelivered copy waits for it.
pub struct Claim<'a> {
    app: &'a App,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.app
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

fn load(settings: &Settings) -> Result<Active, String> {
    let (rules, templates, examples) =
        crate::render::load_serving_set(&settings.templates.dir, &settings.rules.dir, &settings.mail.portal_url)?;
    info!(examples, "templates checked");
    Ok(Active {
        rules: Arc::new(rules),
        templates: Arc::new(templates),
    })
}

impl App {
    /// Opens the store, loads and checks rules, builds the mailer. Nothing connects to the broker yet.
    pub async fn build(settings: Settings) -> Result<Arc<Self>, String> {
        let active = load(&settings)?;
        let sender = settings.sender()?;
        let store = store::connect(&settings.store).await.map_err(|e| e.to_string())?;
        let changes = store.directory_changes(0).await.map_err(|e| e.to_string())?;
        let directory = Directory::from_events(&changes.events);
        let mailer = Mailer::from_settings(&settings.smtp)?;
        let metrics = Metrics::new();
        metrics.set_rules(&active.rules.hash);
        info!(rules = active.rules.rules.len(), hash = %active.rules.hash, "rules loaded");
        Ok(Arc::new(Self {
            settings,
            store,
            mailer,
            publisher: Publisher::default(),
            metrics,
            shutdown: CancellationToken::new(),
            order: Arc::default(),
            sender,
            active: RwLock::new(Arc::new(active)),
            directory: RwLock::new(directory),
            directory_seq: AtomicI64::new(changes.seq),
            directory_apply: tokio::sync::Mutex::new(()),
            in_flight: Mutex::new(HashSet::new()),
        }))
    }

    pub fn active(&self) -> Arc<Active> {
        self.active.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn directory(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the directory changes any worker recorded since the last call.
    /// One indexed query that usually returns nothing, so it runs per event.
    pub async fn refresh_directory(&self) -> Result<(), StoreError> {
        let seen = self.directory_seq.load(Ordering::Acquire);
        let mut changes = self.store.directory_changes(seen).await?;
        if changes.events.is_empty() {
            return Ok(());
        }
        let _applying = self.directory_apply.lock().await;
        let now_seen = self.directory_seq.load(Ordering::Acquire);
        if now_seen != seen {
            // Another task applied some meanwhile: start from where it stopped.
            changes = self.store.directory_changes(now_seen).await?;
        }
        {
            let mut dir = self.directory.write().unwrap_or_else(|e| e.into_inner());
            for event in &changes.events {
                dir.apply(event);
            }
        }
        self.directory_seq.fetch_max(changes.seq, Ordering::AcqRel);
        Ok(())
    }

    /// Waits until no other task is processing `id`, then claims it.
    pub async fn claim(&self, id: &str) -> Claim<'_> {
        loop {
            if self
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_string())
            {
                return Claim {
                    app: self,
                    id: id.to_string(),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reloads rules and templates; a set that fails its check is
    /// rejected and the serving set stays.
    pub fn reload(&self) -> Result<String, String> {
        let active = load(&self.settings)?;
        let hash = active.rules.hash.clone();
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(active);
        self.metrics.set_rules(&hash);
        Ok(hash)
    }
}

/// Runs the worker until SIGTERM/SIGINT; returns once in-flight work is drained.
pub async fn run(app: Arc<App>) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(app.settings.http_addr())
        .await
        .map_err(|e| format!("http.addr {}: {e}", app.settings.http.addr))?;
    info!(addr = %app.settings.http.addr, "HTTP listening");
    let server = tokio::spawn(http::serve(app.clone(), listener));
    tokio::spawn(signals(app.clone()));
    let flushing = tokio::spawn(crate::digest::run_periodically(
        app.clone(),
        app.settings.digest.check_every,
    ));
    consume::run(app.clone()).await;
    app.shutdown.cancel();
    let _ = flushing.await;
    if let Ok(Err(e)) = server.await {
        error!(error = %e, "HTTP server failed");
    }
    info!("stopped");
    Ok(())
}

async fn signals(app: Arc<App>) {
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
            _ = hup.recv() => match app.reload() {
                Ok(hash) => info!(%hash, "rules reloaded"),
                Err(e) => warn!(error = %e, "reload rejected; the previous rules keep serving"),
            },
            () = app.shutdown.cancelled() => return,
        }
    }
    info!("shutdown requested");
    app.shutdown.cancel();
}
