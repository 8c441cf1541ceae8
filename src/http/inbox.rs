//! The Action Center inbox of the signed-in user: pages newest first behind
//! a signed cursor, filters, read / seen / archived, the badge's counts, and
//! a live stream (server-sent events) that pushes each new entry together
//! with the counts as they stand with it, so a badge never drifts from the list.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;

use super::{HttpState, User, bad_request, internal, not_found, unauthorized};
use crate::store::{ActionCenterEntry, InboxCounts, InboxQuery, Mark};

/// The most entries one page holds.
pub const MAX_PAGE: u32 = 100;
const DEFAULT_PAGE: u32 = 20;
/// How often a stream looks for entries any worker stored.
const STREAM_POLL: Duration = Duration::from_millis(500);

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/api/v1/action-center/entries", get(list))
        .route("/api/v1/action-center/unread-count", get(counts))
        .route("/api/v1/action-center/stream", get(stream))
        .route("/api/v1/action-center/entries/{action}", post(mark_all))
        .route("/api/v1/action-center/entries/{id}/{action}", post(mark_one))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    unread: bool,
    category: Option<String>,
    #[serde(default)]
    archived: bool,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// What a cursor's signature covers besides the position: whose inbox it pages.
fn cursor_context(user: &str) -> String {
    format!("inbox\0{user}")
}

/// `GET /api/v1/action-center/entries?limit=&cursor=&unread=&category=&archived=`
async fn list(
    State(app): State<Arc<HttpState>>,
    User(user): User,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return bad_request(format!("limit must be between 1 and {MAX_PAGE}"));
    }
    let before = match q.cursor.as_deref().map(|c| open_cursor(&app, &user, c)) {
        None => None,
        Some(Ok(seq)) => Some(seq),
        Some(Err(e)) => return e,
    };
    let query = InboxQuery {
        unread_only: q.unread,
        category: q.category.as_deref(),
        archived: q.archived,
        before,
        limit,
    };
    let (page, counts) = match tokio::try_join!(app.store.inbox(&user, &query), app.store.counts(&user)) {
        Ok(both) => both,
        Err(e) => return internal(e),
    };
    let next_cursor = page
        .more
        .then(|| page.entries.last())
        .flatten()
        .map(|(seq, _)| app.cursors.seal(&cursor_context(&user), &seq.to_string()));
    let entries: Vec<&ActionCenterEntry> = page.entries.iter().map(|(_, e)| e).collect();
    Json(json!({
        "entries": entries,
        "next_cursor": next_cursor,
        "unread": counts.unread,
        "unseen": counts.unseen,
    }))
    .into_response()
}

fn open_cursor(app: &HttpState, user: &str, cursor: &str) -> Result<i64, Response> {
    app.cursors
        .open(&cursor_context(user), cursor)
        .ok()
        .and_then(|payload| payload.parse().ok())
        .ok_or_else(|| bad_request("cursor: not one this API gave you for this inbox (altered, or for another user)"))
}

/// `GET /api/v1/action-center/unread-count`: `{"unread", "unseen"}`.
async fn counts(State(app): State<Arc<HttpState>>, User(user): User) -> Response {
    match app.store.counts(&user).await {
        Ok(c) => Json(json!({"unread": c.unread, "unseen": c.unseen})).into_response(),
        Err(e) => internal(e),
    }
}

fn parse_mark(action: &str) -> Option<Mark> {
    Some(match action {
        "read" => Mark::Read,
        "seen" => Mark::Seen,
        "archive" => Mark::Archived,
        "unarchive" => Mark::Restored,
        _ => return None,
    })
}

/// `POST /api/v1/action-center/entries/{read|seen}`: all of the user's entries.
async fn mark_all(State(app): State<Arc<HttpState>>, User(user): User, Path(action): Path<String>) -> Response {
    let mark = match parse_mark(&action) {
        Some(m @ (Mark::Read | Mark::Seen)) => m,
        _ => return not_found(format!("no action `{action}` for all entries: use read or seen")),
    };
    match app.store.mark(&user, None, mark).await {
        Ok(n) => Json(json!({"marked": n})).into_response(),
        Err(e) => internal(e),
    }
}

/// `POST /api/v1/action-center/entries/{id}/{read|seen|archive|unarchive}`.
async fn mark_one(
    State(app): State<Arc<HttpState>>,
    User(user): User,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let Some(mark) = parse_mark(&action) else {
        return not_found(format!("no action `{action}`: use read, seen, archive or unarchive"));
    };
    // Unknown, expired, or someone else's: indistinguishable on purpose.
    match app.store.entry(&user, &id).await {
        Ok(Some(_)) => {}
        Ok(None) => return not_found("no such entry"),
        Err(e) => return internal(e),
    }
    match app.store.mark(&user, Some(&id), mark).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct StreamQuery {
    /// For `EventSource`, which cannot send headers: the same JWT.
    access_token: Option<String>,
}

/// `GET /api/v1/action-center/stream`: `counts` at once, then an `entry`
/// event (`{"entry", "unread", "unseen"}`, its id the entry's position) for
/// each entry stored afterwards, and `counts` whenever they change otherwise.
/// A reconnecting client's `Last-Event-ID` resumes after the entry it names.
async fn stream(State(app): State<Arc<HttpState>>, headers: HeaderMap, Query(q): Query<StreamQuery>) -> Response {
    let header_token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = header_token.or(q.access_token.as_deref()) else {
        return unauthorized("a bearer token (or `access_token`) is required");
    };
    let user = match User::from_token(&app, token) {
        Ok(User(user)) => user,
        Err(rejection) => return rejection,
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let after = match resume {
        Some(seq) => seq,
        None => match app.store.newest_entry(&user).await {
            Ok(seq) => seq,
            Err(e) => return internal(e),
        },
    };
    Sse::new(entries(app, user, after))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Where one stream stands.
struct Follow {
    app: Arc<HttpState>,
    user: String,
    after: i64,
    /// The counts last sent; `None` before the first message.
    counts: Option<InboxCounts>,
    ready: std::collections::VecDeque<Event>,
}

fn entries(app: Arc<HttpState>, user: String, after: i64) -> impl Stream<Item = Result<Event, Infallible>> {
    let follow = Follow {
        app,
        user,
        after,
        counts: None,
        ready: std::collections::VecDeque::new(),
    };
    futures_util::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(event) = f.ready.pop_front() {
                return Some((Ok(event), f));
            }
            if f.counts.is_some() {
                tokio::select! {
                    () = f.app.shutdown.cancelled() => return None,
                    () = tokio::time::sleep(STREAM_POLL) => {}
                }
            }
            if f.app.shutdown.is_cancelled() {
                return None;
            }
            f.poll().await;
        }
    })
}

impl Follow {
    /// Queues what changed since the last look; a store error is retried at the next poll.
    async fn poll(&mut self) {
        let fresh = match self.app.store.entries_after(&self.user, self.after).await {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::warn!(error = %e, "inbox stream: reading new entries");
                return;
            }
        };
        // Counted after the entries were read: they include every entry pushed with them.
        let counts = match self.app.store.counts(&self.user).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "inbox stream: counting");
                return;
            }
        };
        for (seq, entry) in &fresh {
            let data = json!({"entry": entry, "unread": counts.unread, "unseen": counts.unseen});
            self.ready.push_back(
                Event::default()
                    .event("entry")
                    .id(seq.to_string())
                    .data(data.to_string()),
            );
            self.after = self.after.max(*seq);
        }
        if fresh.is_empty() && self.counts != Some(counts) {
            let data = json!({"unread": counts.unread, "unseen": counts.unseen});
            self.ready
                .push_back(Event::default().event("counts").data(data.to_string()));
        }
        self.counts = Some(counts);
    }
}
