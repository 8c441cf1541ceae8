//! HTTP: `/healthz`, `/readyz` (broker and store reachable), `/metrics`, the
//! Action Center inbox ([`inbox`]), recipients' preferences and the one-click
//! unsubscribe links in emails ([`preferences`]), and the operators'
//! notification log. The user APIs trust only a bearer JWT (HS256, secret
//! from `http.jwt_secret`); its subject is the user, so a user sees and
//! changes only their own.

// A handler's early exit is the response it sends: `Result<_, Response>` is the idiom.
#![allow(clippy::result_large_err)]

mod inbox;
mod preferences;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use tokio_util::sync::CancellationToken;

use crate::broker::Publisher;
use crate::config::Http;
use crate::flow::Flow;
use crate::signed::Signer;
use crate::store::Store;
use crate::telemetry::Metrics;

/// What the HTTP server reads: the flow's store, metrics, rules and
/// directory (with the preferences), whether the broker is connected, and
/// its own settings.
pub struct HttpState {
    store: Arc<dyn Store>,
    metrics: Metrics,
    publisher: Publisher,
    flow: Arc<Flow>,
    settings: Http,
    /// The signed preferences links emails carry, when configured.
    links: Option<crate::preferences::Links>,
    /// Signs the inbox's page cursors.
    cursors: Signer,
    /// Ends the live streams, so a shutdown does not wait for their clients.
    shutdown: CancellationToken,
}

impl HttpState {
    pub fn new(flow: &Arc<Flow>, settings: &Http, publisher: Publisher, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            store: flow.store.clone(),
            metrics: flow.metrics.clone(),
            publisher,
            flow: flow.clone(),
            settings: settings.clone(),
            links: settings.preference_links(),
            cursors: Signer::new(format!("inbox-cursor\0{}", settings.jwt_secret.expose()).as_bytes()),
            shutdown,
        })
    }
}

pub async fn serve(
    app: Arc<HttpState>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

pub fn router(app: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(inbox::routes())
        .merge(preferences::routes())
        .route("/api/v1/log", get(notification_log))
        .with_state(app)
}

async fn readyz(State(app): State<Arc<HttpState>>) -> Response {
    let store = app.store.ping().await.err().map(|e| e.to_string());
    let broker = (!app.publisher.connected()).then(|| "not connected".to_string());
    let ready = store.is_none() && broker.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "store": store.unwrap_or_else(|| "ok".into()),
                    "broker": broker.unwrap_or_else(|| "ok".into())})),
    )
        .into_response()
}

async fn metrics(State(app): State<Arc<HttpState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// The authenticated user: the `sub` of a valid bearer token.
pub struct User(pub String);

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

fn unauthorized(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": why})),
    )
        .into_response()
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

impl FromRequestParts<Arc<HttpState>> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<HttpState>) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| unauthorized("a bearer token is required"))?;
        User::from_token(app, token)
    }
}

impl User {
    /// The user a JWT names, if it is valid.
    fn from_token(app: &HttpState, token: &str) -> Result<Self, Response> {
        let secret = &app.settings.jwt_secret;
        if secret.is_empty() {
            return Err(unauthorized("the user API is not configured"));
        }
        let key = DecodingKey::from_secret(secret.expose().as_bytes());
        let data = jsonwebtoken::decode::<Claims>(token.trim(), &key, &Validation::new(Algorithm::HS256))
            .map_err(|_| unauthorized("invalid token"))?;
        if data.claims.sub.trim().is_empty() {
            return Err(unauthorized("the token names no user"));
        }
        Ok(User(data.claims.sub))
    }
}

/// A 400 whose body says what was wrong with the request.
fn bad_request(why: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": why.to_string()}))).into_response()
}

fn not_found(why: impl std::fmt::Display) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": why.to_string()}))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "HTTP API");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "store unavailable"})),
    )
        .into_response()
}

/// An operator: the bearer token equals `http.admin_token`.
pub struct Operator;

impl FromRequestParts<Arc<HttpState>> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<HttpState>) -> Result<Self, Self::Rejection> {
        let expected = &app.settings.admin_token;
        if expected.is_empty() {
            return Err(unauthorized("the notification log API is not configured"));
        }
        let token = bearer(parts).ok_or_else(|| unauthorized("a bearer token is required"))?;
        // Compare in constant time: the token is a shared secret.
        let (a, b) = (token.trim().as_bytes(), expected.expose().as_bytes());
        let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        if same {
            Ok(Operator)
        } else {
            Err(unauthorized("invalid token"))
        }
    }
}

#[derive(Deserialize)]
struct LogQuery {
    event: Option<String>,
    recipient: Option<String>,
}

/// `GET /api/v1/log?event=ID` or `?recipient=EMAIL`: why did (or didn't) they get it.
async fn notification_log(State(app): State<Arc<HttpState>>, _: Operator, Query(q): Query<LogQuery>) -> Response {
    let rows = match (q.event.as_deref(), q.recipient.as_deref()) {
        (Some(id), None) if !id.trim().is_empty() => app.store.log_for_event(id.trim()).await,
        (None, Some(email)) if email.contains('@') => app.store.log_for_recipient(email.trim(), 500).await,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "give exactly one of `event` (an event id) or `recipient` (an email address)"})),
            )
                .into_response();
        }
    };
    match rows {
        Ok(rows) => {
            let serving = app.flow.serving.current();
            let entries: Vec<_> = rows
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["suppressed_by"] = json!(serving.rules.suppressing(&r.rules));
                    v
                })
                .collect();
            let mut body = json!({ "entries": entries });
            // For an event with no planned delivery: never seen, routed to nobody, or dead-lettered.
            if let (Some(id), true) = (q.event.as_deref(), entries.is_empty()) {
                match app.store.event_record(id.trim()).await {
                    Ok(record) => body["event"] = json!(record),
                    Err(e) => return internal(e),
                }
            }
            Json(body).into_response()
        }
        Err(e) => internal(e),
    }
}
