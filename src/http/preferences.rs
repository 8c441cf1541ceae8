//! Recipients' preferences: the API the portal uses (bearer JWT, the user's
//! own only), and the signed link every optional email carries, which shows
//! a page on `GET` and stops the notification on a one-click `POST`
//! (RFC 8058). A `GET` never changes anything: link scanners follow links.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{HttpState, User, bad_request, internal, not_found};
use crate::preferences::{Addressee, PreferenceChange, Refusal, Request, Subject, changes_for, overview};
use crate::route::rules::Channel;
use crate::signed::TokenError;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/api/v1/preferences", get(show).put(change))
        .route("/api/v1/preferences/{notification}", axum::routing::put(change_one))
        .route("/preferences/{token}", get(page).post(one_click))
}

/// The email address a signed-in user receives notifications at: the token's
/// subject when it is one, else the directory's address for that user id.
fn recipient_of(app: &HttpState, user: &str) -> Option<String> {
    if user.contains('@') {
        return Some(user.trim().to_lowercase());
    }
    let directory = app.flow.directory.read();
    directory
        .users()
        .find(|u| u.user_id.as_str() == user)
        .map(|u| u.email.as_str().to_lowercase())
}

/// Brings the directory (and so the preferences) up to what every worker recorded.
async fn refresh(app: &HttpState) -> Result<(), Response> {
    app.flow.directory.refresh(&*app.store).await.map_err(internal)
}

async fn signed_in(app: &HttpState, user: &str) -> Result<String, Response> {
    refresh(app).await?;
    recipient_of(app, user).ok_or_else(|| not_found("the directory knows no email address for this user"))
}

fn overview_json(app: &HttpState, recipient: &str) -> Response {
    let rules = &app.flow.serving.current().rules;
    let view = overview(rules, &app.flow.directory.read().preferences, recipient);
    Json(view).into_response()
}

/// `GET /api/v1/preferences`: every notification with its category, whether
/// it can be turned off, and whether it reaches the user, per channel.
async fn show(State(app): State<Arc<HttpState>>, User(user): User) -> Response {
    match signed_in(&app, &user).await {
        Ok(recipient) => overview_json(&app, &recipient),
        Err(e) => e,
    }
}

/// `PUT /api/v1/preferences` with `{"notifications": {ID: {CHANNEL: bool}}, "categories": {…}}`.
async fn change(State(app): State<Arc<HttpState>>, User(user): User, body: Bytes) -> Response {
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "the body must be JSON like {{\"notifications\": {{\"lead-generated\": {{\"email\": false}}}}, \
                 \"categories\": {{\"leads\": {{\"email\": false}}}}}}: {e}"
            ));
        }
    };
    apply(&app, &user, &request).await
}

/// `PUT /api/v1/preferences/{notification}` with `{CHANNEL: bool}`.
async fn change_one(
    State(app): State<Arc<HttpState>>,
    User(user): User,
    Path(notification): Path<String>,
    body: Bytes,
) -> Response {
    let channels = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return bad_request(format!("the body must be JSON like {{\"email\": false}}: {e}")),
    };
    if !app
        .flow
        .serving
        .current()
        .rules
        .notifications
        .contains_key(&notification)
    {
        return not_found(format!("unknown notification `{notification}`"));
    }
    let request = Request {
        notifications: [(notification, channels)].into(),
        categories: Default::default(),
    };
    apply(&app, &user, &request).await
}

async fn apply(app: &HttpState, user: &str, request: &Request) -> Response {
    let recipient = match signed_in(app, user).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let changes = match changes_for(&app.flow.serving.current().rules, &recipient, request) {
        Ok(c) => c,
        Err(refusal) => return refused(&refusal),
    };
    if let Err(e) = record(app, &changes).await {
        return e;
    }
    overview_json(app, &recipient)
}

fn refused(refusal: &Refusal) -> Response {
    let status = match refusal {
        Refusal::Mandatory(_) | Refusal::MandatoryCategory(_) => StatusCode::CONFLICT,
        Refusal::UnknownNotification(_) | Refusal::UnknownCategory(_) | Refusal::NoSuchChannel { .. } => {
            StatusCode::BAD_REQUEST
        }
    };
    (status, Json(json!({"error": refusal.to_string()}))).into_response()
}

/// Records the changes that change something, and applies them to this worker's copy at once.
async fn record(app: &HttpState, changes: &[PreferenceChange]) -> Result<(), Response> {
    let changing: Vec<PreferenceChange> = {
        let directory = app.flow.directory.read();
        changes
            .iter()
            .filter(|c| directory.preferences.choice(&c.recipient, &c.subject, c.channel) != Some(c.enabled))
            .cloned()
            .collect()
    };
    if changing.is_empty() {
        return Ok(());
    }
    app.store.record_preferences(&changing).await.map_err(internal)?;
    for c in &changing {
        tracing::info!(recipient = %c.recipient, subject = %c.subject.key(), channel = %c.channel,
                       enabled = c.enabled, "preference changed");
    }
    refresh(app).await
}

/// A checked preferences link: who, which notification (its title), and whether it can be turned off.
struct Linked {
    who: Addressee,
    title: String,
    optional: bool,
}

/// What a preferences link names, checked; the page to show when it is refused.
fn addressee(app: &HttpState, token: &str) -> Result<Linked, Response> {
    let Some(links) = &app.links else {
        return Err(page_response(
            StatusCode::NOT_FOUND,
            "Link not available",
            "<p>This server does not serve preference links.</p>",
        ));
    };
    let who = links.verify(token).map_err(|e| {
        let status = match e {
            TokenError::Malformed => StatusCode::BAD_REQUEST,
            TokenError::Forged => StatusCode::FORBIDDEN,
        };
        page_response(
            status,
            "This link is not valid",
            &format!(
                "<p>The link is {}. Nothing was changed. Use the link in one of your emails, unaltered.</p>",
                escape(&e.to_string())
            ),
        )
    })?;
    let rules = &app.flow.serving.current().rules;
    let Some(n) = rules.notifications.get(&who.notification) else {
        return Err(page_response(
            StatusCode::NOT_FOUND,
            "Notification no longer sent",
            "<p>This link is for a notification that is no longer sent. Nothing was changed.</p>",
        ));
    };
    Ok(Linked {
        title: n.title.clone(),
        optional: n.optional,
        who,
    })
}

/// The page for a mandatory notification's link.
fn always_sent(status: StatusCode, title: &str) -> Response {
    page_response(
        status,
        "This notification cannot be turned off",
        &format!(
            "<p><strong>{}</strong> asks you to act, so it is always sent. Nothing was changed.</p>",
            escape(title)
        ),
    )
}

/// `GET /preferences/{token}`: what the link would stop, and a button; changes nothing.
async fn page(State(app): State<Arc<HttpState>>, Path(token): Path<String>) -> Response {
    let Linked { who, title, optional } = match addressee(&app, &token) {
        Ok(w) => w,
        Err(page) => return page,
    };
    if !optional {
        return always_sent(StatusCode::OK, &title);
    }
    if let Err(e) = refresh(&app).await {
        return e;
    }
    let on = wants_email(&app, &who);
    page_response(
        StatusCode::OK,
        "Email notification settings",
        &state_page(&who, &title, on),
    )
}

fn wants_email(app: &HttpState, who: &Addressee) -> bool {
    let rules = &app.flow.serving.current().rules;
    let category = rules.category_of(&who.notification);
    app.flow
        .directory
        .read()
        .preferences
        .wants(&who.recipient, &who.notification, category, Channel::Email)
}

fn state_page(who: &Addressee, title: &str, on: bool) -> String {
    let (title, to) = (escape(title), escape(&who.recipient));
    if on {
        format!(
            "<p>You receive <strong>{title}</strong> emails at {to}.</p>\
             <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
             <button type=\"submit\">Stop these emails</button></form>"
        )
    } else {
        format!(
            "<p>You no longer receive <strong>{title}</strong> emails at {to}.</p>\
             <form method=\"post\"><input type=\"hidden\" name=\"subscribe\" value=\"again\">\
             <button type=\"submit\">Send them to me again</button></form>"
        )
    }
}

/// `POST /preferences/{token}` with `List-Unsubscribe=One-Click` (RFC 8058):
/// stops the notification's emails to the link's recipient; idempotent. The
/// page's own button may send `subscribe=again` instead.
async fn one_click(
    State(app): State<Arc<HttpState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Linked { who, title, optional } = match addressee(&app, &token) {
        Ok(w) => w,
        Err(page) => return page,
    };
    if !optional {
        return always_sent(StatusCode::CONFLICT, &title);
    }
    let Some(enabled) = wanted(&headers, &body) else {
        return page_response(
            StatusCode::BAD_REQUEST,
            "Nothing to do",
            "<p>The request must carry <code>List-Unsubscribe=One-Click</code>. Nothing was changed.</p>",
        );
    };
    if let Err(e) = refresh(&app).await {
        return e;
    }
    let change = PreferenceChange::new(
        &who.recipient,
        Subject::Notification(who.notification.clone()),
        Channel::Email,
        enabled,
    );
    if let Err(e) = record(&app, &[change]).await {
        return e;
    }
    page_response(
        StatusCode::OK,
        "Email notification settings",
        &state_page(&who, &title, enabled),
    )
}

/// What a one-click body asks for: `Some(false)` to stop, `Some(true)` to send again.
fn wanted(headers: &HeaderMap, body: &[u8]) -> Option<bool> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let text = std::str::from_utf8(body).ok()?;
    if content_type.starts_with("multipart/form-data") {
        // Some providers post the field as a multipart form.
        let field = text.find("name=\"List-Unsubscribe\"")?;
        return text[field..].contains("One-Click").then_some(false);
    }
    let pairs: Vec<(&str, &str)> = text.trim().split('&').filter_map(|p| p.split_once('=')).collect();
    if pairs.contains(&("List-Unsubscribe", "One-Click")) {
        Some(false)
    } else if pairs.contains(&("subscribe", "again")) {
        Some(true)
    } else {
        None
    }
}

fn page_response(status: StatusCode, heading: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{heading}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}}\
         button{{font-size:1rem;padding:.6rem 1.2rem;border:0;border-radius:4px;background:#0f6cbd;color:#fff;cursor:pointer}}</style>\
         </head><body><h1>{heading}</h1>{body}</body></html>",
        heading = escape(heading)
    );
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(html),
    )
        .into_response()
}

fn escape(text: &str) -> String {
    handlebars::html_escape(text)
}
