//! `referral-router console`: the template and rule authors' web page, on
//! loopback. It reads the working copy of `rules/` and `templates/` (again
//! whenever a file changes), the example events and the test directory, and,
//! when the configured store exists, its directory, preferences and archived
//! events. Every preview is produced by [`crate::preview`], the worker's own
//! send path with the worker's configuration. It writes no file (a test send
//! goes to the configured mail server, or its `.eml` folder without one).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::config::Settings;
use crate::decode::read_event;
use crate::directory::Directory;
use crate::dispatch::email::Letterhead;
use crate::event::Event;
use crate::preview::{Ask, preview};
use crate::serving::{Addresses, ServingSet};
use crate::store::Store;

const PAGE: &str = include_str!("console.html");

/// What the console reads.
pub struct Console {
    rules_dir: PathBuf,
    templates_dir: PathBuf,
    addresses: Addresses,
    letterhead: Letterhead,
    /// Where test sends go: the configured mail server (or its `.eml` folder).
    smtp: crate::config::Smtp,
    directory: Directory,
    store: Option<Arc<dyn Store>>,
    loaded: Mutex<Loaded>,
}

/// The files as last read: the newest good set, and the error of a newer broken one.
#[derive(Default)]
struct Loaded {
    stamp: Option<SystemTime>,
    set: Option<Arc<ServingSet>>,
    error: Option<String>,
    version: u64,
}

impl Console {
    /// From the worker's settings; the store only when it already exists (a
    /// console never creates one).
    pub async fn new(settings: &Settings) -> Result<Self, String> {
        let url = settings.store.url.expose();
        let exists = match url.strip_prefix("sqlite://") {
            Some(path) => Path::new(path.split('?').next().unwrap_or(path)).exists(),
            None => true,
        };
        let store = if exists {
            Some(
                crate::store::connect(&settings.store, &settings.archive)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let directory = match &store {
            Some(store) => crate::flow::DirectoryCache::load(&**store)
                .await
                .map_err(|e| e.to_string())?
                .snapshot(),
            None => {
                let file = settings.rules.dir.join("tests/directory.jsonl");
                if file.exists() {
                    crate::decode::read_directory(&file).map_err(|e| e.to_string())?
                } else {
                    Directory::default()
                }
            }
        };
        Ok(Self {
            rules_dir: settings.rules.dir.clone(),
            templates_dir: settings.templates.dir.clone(),
            addresses: Addresses::from_settings(settings),
            letterhead: Letterhead::from_settings(settings)?,
            smtp: settings.smtp.clone(),
            directory,
            store,
            loaded: Mutex::default(),
        })
    }

    /// The set to preview with, read again when a file changed; the newest error, if any.
    fn current(&self) -> (Option<Arc<ServingSet>>, Option<String>, u64) {
        let stamp = newest([&self.rules_dir, &self.templates_dir]);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.stamp != stamp || loaded.set.is_none() && loaded.error.is_none() {
            loaded.stamp = stamp;
            loaded.version += 1;
            match ServingSet::load(&self.rules_dir, &self.templates_dir, &self.addresses) {
                Ok(set) => {
                    loaded.set = Some(Arc::new(set));
                    loaded.error = None;
                }
                Err(e) => loaded.error = Some(e.to_string()),
            }
        }
        (loaded.set.clone(), loaded.error.clone(), loaded.version)
    }

    fn examples(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.rules_dir.join("tests/events"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_owned))
                    .filter(|n| !n.starts_with("directory."))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// An example by name (its file without `.json`), else a recorded event by id.
    async fn event(&self, name: &str) -> Result<Event, Response> {
        let safe = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        let file = self.rules_dir.join("tests/events").join(format!("{name}.json"));
        if safe && file.exists() {
            return read_event(&file).map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
        if let Some(store) = &self.store {
            let all = store
                .archived(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH, chrono::Utc::now())
                .await
                .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            if let Some(event) = all.into_iter().find(|e| e.id.as_str() == name) {
                return Ok(event);
            }
        }
        Err(error(
            StatusCode::NOT_FOUND,
            format!("no example event `{name}` (rules/tests/events/{name}.json) and no recorded event with that id"),
        ))
    }
}

/// What a request about one event works on: the set (the last good one), a
/// newer set's error, the version, and the event.
struct Working {
    set: Arc<ServingSet>,
    broken: Option<String>,
    version: u64,
    event: Event,
}

impl Console {
    async fn working(&self, event: &str) -> Result<Working, Response> {
        let (set, broken, version) = self.current();
        let Some(set) = set else {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                broken.unwrap_or_else(|| "nothing loaded".into()),
            ));
        };
        let event = self.event(event).await?;
        Ok(Working {
            set,
            broken,
            version,
            event,
        })
    }
}

/// The newest modification time of any file under `dirs`.
fn newest<'a>(dirs: impl IntoIterator<Item = &'a PathBuf>) -> Option<SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<SystemTime>, depth: u32) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() && depth < 8 {
                walk(&entry.path(), newest, depth + 1);
            } else if let Ok(m) = meta.modified() {
                *newest = (*newest).max(Some(m));
            }
        }
    }
    let mut out = None;
    for dir in dirs {
        walk(dir, &mut out, 0);
    }
    out
}

fn error(status: StatusCode, why: String) -> Response {
    (status, Json(json!({"error": why}))).into_response()
}

pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/catalogue", get(catalogue))
        .route("/api/version", get(version))
        .route("/api/preview", get(preview_json))
        .route("/api/explain", get(explain))
        .route("/api/test-send", axum::routing::post(test_send))
        .route("/api/locales", get(locales))
        .with_state(console)
}

/// Serves the console on `addr` until the process is stopped.
pub async fn serve(settings: &Settings, addr: &str) -> Result<(), String> {
    let console = Arc::new(Console::new(settings).await?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("console: cannot listen on {addr}: {e}"))?;
    eprintln!("console: http://{addr}/");
    axum::serve(listener, router(console)).await.map_err(|e| e.to_string())
}

/// `GET /api/version`: changes whenever the files do; with the checker's error for a broken set.
async fn version(State(c): State<Arc<Console>>) -> Response {
    let (_, error, version) = c.current();
    Json(json!({"version": version, "error": error})).into_response()
}

/// `GET /api/catalogue`: the notifications (with the example events the
/// rules send each for), the example events, the locales.
async fn catalogue(State(c): State<Arc<Console>>) -> Response {
    let (set, error, version) = c.current();
    let examples: Vec<(String, Vec<String>)> = match &set {
        Some(s) => {
            let mut routed = Vec::new();
            for name in c.examples() {
                if let Ok(event) = c.event(&name).await {
                    let plan = crate::route::route(&event, &s.rules, &c.directory, &crate::route::MemoryState::new());
                    routed.push((name, plan.deliveries.into_iter().map(|d| d.notification).collect()));
                }
            }
            routed
        }
        None => Vec::new(),
    };
    let notifications: Vec<_> = set
        .as_ref()
        .map(|s| {
            s.rules
                .notifications
                .iter()
                .map(|(id, n)| {
                    let events: Vec<&String> = examples
                        .iter()
                        .filter(|(_, sent)| sent.contains(id))
                        .map(|(name, _)| name)
                        .collect();
                    json!({"id": id, "title": n.title, "locales": s.templates.locales(id), "events": events})
                })
                .collect()
        })
        .unwrap_or_default();
    Json(json!({
        "notifications": notifications,
        "events": c.examples(),
        "version": version,
        "error": error,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    event: String,
}

/// `GET /api/explain?event=NAME`: what `explain` prints, as data: every planned
/// delivery with its deciding rules, and for every rule of the event's type
/// whether it matched, or the first condition that failed with the value seen.
async fn explain(State(c): State<Arc<Console>>, query: Result<Query<EventQuery>, QueryRejection>) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let w = match c.working(&q.event).await {
        Ok(w) => w,
        Err(response) => return response,
    };
    let plan = crate::route::route(&w.event, &w.set.rules, &c.directory, &crate::route::MemoryState::new());
    Json(json!({"event": w.event.id, "type": w.event.event_type, "plan": plan, "error": w.broken})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSend {
    notification: String,
    event: String,
    recipient: Option<String>,
    locale: Option<String>,
    /// Where the test goes (a mail catcher, your own inbox).
    to: String,
}

/// `POST /api/test-send` with `{"notification", "event", "recipient"?, "locale"?, "to"}`:
/// the previewed email to `to` through the configured SMTP server, marked as a test.
async fn test_send(State(c): State<Arc<Console>>, body: axum::body::Bytes) -> Response {
    let ask: TestSend = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body: {e}")),
    };
    let w = match c.working(&ask.event).await {
        Ok(w) => w,
        Err(response) => return response,
    };
    let preview_ask = Ask::new(
        &ask.notification,
        &w.event,
        ask.recipient.as_deref(),
        ask.locale.as_deref(),
    );
    let message = match crate::preview::test_message(&w.set, &c.letterhead, &c.directory, &preview_ask, &ask.to) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let mailer = match crate::dispatch::email::Mailer::from_settings(&c.smtp) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    match mailer.deliver(message, async { Ok(true) }, async { Ok(()) }).await {
        Ok(()) => Json(json!({"sent_to": ask.to})).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("the mail server: {e}")),
    }
}

/// The locales every notification is written in, and the ones a person may have.
const LOCALES: &[&str] = &["en-US", "de-DE", "zh-CN"];

/// `GET /api/locales`: per template and locale, whether a variant exists or
/// which one is used instead.
async fn locales(State(c): State<Arc<Console>>) -> Response {
    let (set, broken, _) = c.current();
    let Some(set) = set else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, broken.unwrap_or_default());
    };
    let mut locales: Vec<String> = LOCALES.iter().map(|l| (*l).to_owned()).collect();
    for name in set.templates.names() {
        for l in set.templates.locales(name) {
            if !locales.contains(l) {
                locales.push(l.clone());
            }
        }
    }
    let grid: Vec<_> = set
        .templates
        .names()
        .map(|name| {
            let cells: serde_json::Map<String, serde_json::Value> = locales
                .iter()
                .map(|l| {
                    let used = set.templates.pick_locale(name, Some(l)).unwrap_or_default();
                    let cell = if used == l {
                        json!({"exists": true})
                    } else {
                        json!({"exists": false, "falls_back_to": used})
                    };
                    (l.clone(), cell)
                })
                .collect();
            json!({"template": name, "locales": cells})
        })
        .collect();
    Json(json!({"locales": locales, "templates": grid})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewQuery {
    notification: String,
    event: String,
    locale: Option<String>,
    recipient: Option<String>,
}

/// `GET /api/preview?notification=ID&event=NAME&locale=L&recipient=ADDR`.
async fn preview_json(State(c): State<Arc<Console>>, query: Result<Query<PreviewQuery>, QueryRejection>) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let w = match c.working(&q.event).await {
        Ok(w) => w,
        Err(response) => return response,
    };
    let ask = Ask::new(&q.notification, &w.event, q.recipient.as_deref(), q.locale.as_deref());
    match preview(&w.set, &c.letterhead, &c.directory, &ask) {
        Ok(p) => {
            let mut body = serde_json::to_value(p).unwrap_or_default();
            body["version"] = json!(w.version);
            // A newer set that does not load: this preview is the last good one.
            body["error"] = json!(w.broken);
            Json(body).into_response()
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}
