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
use crate::replay::diff::diff;
use crate::replay::{Engine, replay};
use crate::serving::{Addresses, ServingSet};
use crate::store::Store;

const PAGE: &str = include_str!("console.html");

/// What the console reads.
pub struct Console {
    rules_dir: PathBuf,
    working: Watched,
    /// What "what would change" compares the working copy with.
    against: Against,
    addresses: Addresses,
    letterhead: Letterhead,
    /// Where test sends go: the configured mail server (or its `.eml` folder).
    smtp: crate::config::Smtp,
    directory: Directory,
    store: Option<Arc<dyn Store>>,
    /// Events pasted into the page, newest last (at most [`PASTED`]).
    pasted: Mutex<Vec<Event>>,
}

/// How many pasted events the console keeps.
const PASTED: usize = 50;

/// A rules and templates folder, read again whenever a file in it changes.
struct Watched {
    rules_dir: PathBuf,
    templates_dir: PathBuf,
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

impl Watched {
    fn new(rules_dir: PathBuf, templates_dir: PathBuf) -> Self {
        Self {
            rules_dir,
            templates_dir,
            loaded: Mutex::default(),
        }
    }

    /// The set as the files are now (the last good one if they are broken), the newest error, the version.
    fn current(&self, addresses: &Addresses) -> (Option<Arc<ServingSet>>, Option<String>, u64) {
        let stamp = newest([&self.rules_dir, &self.templates_dir]);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.stamp != stamp || loaded.set.is_none() && loaded.error.is_none() {
            loaded.stamp = stamp;
            loaded.version += 1;
            match ServingSet::load(&self.rules_dir, &self.templates_dir, addresses) {
                Ok(set) => {
                    loaded.set = Some(Arc::new(set));
                    loaded.error = None;
                }
                Err(e) => loaded.error = Some(e.to_string()),
            }
        }
        (loaded.set.clone(), loaded.error.clone(), loaded.version)
    }
}

/// The base of "what would change".
enum Against {
    /// Other folders (`--against`), e.g. what is deployed.
    Folders(Watched),
    /// The working copy as first loaded by this console.
    Start(Mutex<Option<Arc<ServingSet>>>),
}

impl Console {
    /// From the worker's settings; the store only when it already exists (a
    /// console never creates one).
    pub async fn new(settings: &Settings, against: Option<(PathBuf, PathBuf)>) -> Result<Self, String> {
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
        let against = match against {
            Some((rules, templates)) => Against::Folders(Watched::new(rules, templates)),
            None => Against::Start(Mutex::default()),
        };
        let console = Self {
            rules_dir: settings.rules.dir.clone(),
            working: Watched::new(settings.rules.dir.clone(), settings.templates.dir.clone()),
            against,
            addresses: Addresses::from_settings(settings),
            letterhead: Letterhead::from_settings(settings)?,
            smtp: settings.smtp.clone(),
            directory,
            store,
            pasted: Mutex::default(),
        };
        // The base of "what would change" is the working copy as it is now.
        console.current();
        Ok(console)
    }

    /// The set to preview with, read again when a file changed; the newest error, if any.
    fn current(&self) -> (Option<Arc<ServingSet>>, Option<String>, u64) {
        let current = self.working.current(&self.addresses);
        if let (Against::Start(first), Some(set)) = (&self.against, &current.0) {
            first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| set.clone());
        }
        current
    }

    /// The base set of "what would change", and what it is, for people.
    fn base(&self) -> Result<(Arc<ServingSet>, String), String> {
        match &self.against {
            Against::Folders(w) => match w.current(&self.addresses) {
                (Some(set), None, _) => Ok((
                    set,
                    format!("{} and {}", w.rules_dir.display(), w.templates_dir.display()),
                )),
                (_, error, _) => Err(format!(
                    "the base ({}) does not load: {}",
                    w.rules_dir.display(),
                    error.unwrap_or_default()
                )),
            },
            Against::Start(first) => {
                let first = first.lock().unwrap_or_else(|e| e.into_inner()).clone();
                first
                    .map(|set| (set, "the working copy when the console started".to_owned()))
                    .ok_or_else(|| "the working copy did not load when the console started".to_owned())
            }
        }
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

    /// An example by name (its file without `.json`), else a pasted,
    /// example or recorded event by id.
    async fn event(&self, name: &str) -> Result<Event, Response> {
        let safe = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        let file = self.rules_dir.join("tests/events").join(format!("{name}.json"));
        if safe && file.exists() {
            return read_event(&file).map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
        let pasted = {
            let pasted = self.pasted.lock().unwrap_or_else(|e| e.into_inner());
            pasted.iter().rev().find(|e| e.id.as_str() == name).cloned()
        };
        if let Some(event) = pasted {
            return Ok(event);
        }
        let by_id = |events: Vec<Event>| events.into_iter().find(|e| e.id.as_str() == name);
        if let Some(event) = by_id(self.example_events()) {
            return Ok(event);
        }
        if let Some(store) = &self.store {
            let all = self
                .recorded(store)
                .await
                .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e))?;
            if let Some(event) = by_id(all) {
                return Ok(event);
            }
        }
        Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "no example event `{name}` (rules/tests/events/{name}.json) and no pasted or recorded event with that id"
            ),
        ))
    }

    /// What routing plans for `event` with `set`, against the console's
    /// directory and no stored state (as `explain` does).
    fn plan(&self, set: &ServingSet, event: &Event) -> crate::route::Plan {
        crate::route::route(event, &set.rules, &self.directory, &crate::route::MemoryState::new())
    }

    /// The example events, in the order of their names (those that decode).
    fn example_events(&self) -> Vec<Event> {
        let dir = self.rules_dir.join("tests/events");
        self.examples()
            .iter()
            .filter_map(|name| read_event(&dir.join(format!("{name}.json"))).ok())
            .collect()
    }

    /// The archive's events, oldest first.
    async fn recorded(&self, store: &Arc<dyn Store>) -> Result<Vec<Event>, String> {
        store
            .archived(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH, chrono::Utc::now())
            .await
            .map_err(|e| e.to_string())
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

/// A request's query, or the 400 saying what is wrong with it.
fn parsed<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, Box<Response>> {
    query
        .map(|Query(q)| q)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e.body_text())))
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
        .route("/api/changes", get(changes))
        .route("/api/events", axum::routing::post(paste))
        .with_state(console)
}

/// Serves the console on `addr` until the process is stopped; "what would
/// change" compares with `against` (rules, templates), else the files as they
/// were at start.
pub async fn serve(settings: &Settings, addr: &str, against: Option<(PathBuf, PathBuf)>) -> Result<(), String> {
    let console = Arc::new(Console::new(settings, against).await?);
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
                    let plan = c.plan(s, &event);
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
    let q = match parsed(query) {
        Ok(q) => q,
        Err(response) => return *response,
    };
    let w = match c.working(&q.event).await {
        Ok(w) => w,
        Err(response) => return response,
    };
    let plan = c.plan(&w.set, &w.event);
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
    let dir = &c.working.templates_dir;
    let gaps: Vec<String> = crate::render::source::read_tree(dir)
        .map(|tree| {
            crate::render::source::gaps(dir, &tree)
                .iter()
                .map(ToString::to_string)
                .collect()
        })
        .unwrap_or_default();
    Json(json!({"locales": locales, "templates": grid, "warnings": gaps})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewQuery {
    notification: String,
    event: String,
    locale: Option<String>,
    recipient: Option<String>,
    /// `base`: with the base of "what would change" instead of the working copy.
    set: Option<String>,
}

/// `GET /api/preview?notification=ID&event=NAME&locale=L&recipient=ADDR`.
async fn preview_json(State(c): State<Arc<Console>>, query: Result<Query<PreviewQuery>, QueryRejection>) -> Response {
    let q = match parsed(query) {
        Ok(q) => q,
        Err(response) => return *response,
    };
    let w = match c.working(&q.event).await {
        Ok(w) => w,
        Err(response) => return response,
    };
    let set = match q.set.as_deref() {
        None | Some("working") => w.set,
        Some("base") => match c.base() {
            Ok((base, _)) => base,
            Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
        },
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("set is `working` or `base`, not `{other}`"),
            );
        }
    };
    let ask = Ask::new(&q.notification, &w.event, q.recipient.as_deref(), q.locale.as_deref());
    match preview(&set, &c.letterhead, &c.directory, &ask) {
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

/// `GET /api/changes`: "what would change". The working copy against the base
/// (`--against`, else the files when the console started), both replayed
/// through the worker's routing over the recorded events (the archive, when it
/// has any) or else the examples: the deliveries added, removed and changed,
/// grouped by notification.
async fn changes(State(c): State<Arc<Console>>) -> Response {
    let (set, broken, version) = c.current();
    let Some(set) = set else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, broken.unwrap_or_default());
    };
    let (base, against) = match c.base() {
        Ok(b) => b,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let recorded = match &c.store {
        Some(store) => match c.recorded(store).await {
            Ok(events) => events,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        },
        None => Vec::new(),
    };
    let (events, source) = if recorded.is_empty() {
        (c.example_events(), "examples")
    } else {
        (recorded, "recorded")
    };
    let directory = c.directory.clone();
    let work = tokio::task::spawn_blocking(move || {
        fn engine(s: &ServingSet) -> Engine<'_> {
            Engine {
                rules: &s.rules,
                templates: Some(&s.templates),
            }
        }
        let (from, _) = replay(&engine(&base), directory.clone(), &events);
        let (to, duplicates) = replay(&engine(&set), directory, &events);
        let d = diff(events.len() - duplicates, &from, &to);
        (d, set)
    });
    let Ok((d, set)) = work.await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the replay failed".into());
    };
    let mut groups: std::collections::BTreeMap<String, serde_json::Value> = std::collections::BTreeMap::new();
    let rows = d.added.iter().map(|r| ("added", &r.notification, json!(r)));
    let rows = rows.chain(d.removed.iter().map(|r| ("removed", &r.notification, json!(r))));
    let rows = rows.chain(d.changed.iter().map(|r| ("changed", &r.notification, json!(r))));
    for (kind, notification, row) in rows {
        let group = groups.entry(notification.clone()).or_insert_with(|| {
            let title = set.rules.notifications.get(notification).map(|n| n.title.clone());
            json!({"notification": notification, "title": title, "added": [], "removed": [], "changed": []})
        });
        if let Some(list) = group[kind].as_array_mut() {
            list.push(row);
        }
    }
    Json(json!({
        "against": against,
        "source": source,
        "events": d.events,
        "summary": d.summary,
        "notifications": groups.into_values().collect::<Vec<_>>(),
        "version": version,
        "error": broken,
    }))
    .into_response()
}

/// `POST /api/events` with one event's JSON, as it would come from the broker:
/// kept (in memory) for previews under its id, which the answer gives with the
/// notifications the rules send for it.
async fn paste(State(c): State<Arc<Console>>, body: axum::body::Bytes) -> Response {
    let event = match crate::decode::decode_structured(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not an event: {e}")),
    };
    let mut notifications: Vec<String> = Vec::new();
    if let Some(set) = c.current().0 {
        for d in c.plan(&set, &event).deliveries {
            // Once each, though planned on two channels or for several people.
            if !notifications.contains(&d.notification) {
                notifications.push(d.notification);
            }
        }
    }
    let answer = json!({"event": event.id, "type": event.event_type, "notifications": notifications});
    let mut pasted = c.pasted.lock().unwrap_or_else(|e| e.into_inner());
    pasted.retain(|e| e.id != event.id);
    pasted.push(event);
    if pasted.len() > PASTED {
        pasted.remove(0);
    }
    Json(answer).into_response()
}
