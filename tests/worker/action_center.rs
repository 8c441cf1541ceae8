//! The Action Center API: bearer-JWT users read, count and mark their own entries only.

use std::time::Duration;

use serde_json::Value;

use crate::support::{self, Backend, JWT_SECRET, example, http, jwt, on_both_backends};

on_both_backends!(users_see_and_mark_only_their_own_entries, health_readiness_and_metrics,);

async fn get(addr: &str, path: &str, tok: Option<&str>) -> (u16, Value) {
    let (status, body) = http(addr, "GET", path, tok).await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn users_see_and_mark_only_their_own_entries(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = support::start("ac", backend, &[]).await;
    let probe = broker.probe(&broker.action_center).await;
    broker.publish(&example("cosell.opportunity.shared.json")).await;
    broker.publish(&example("dealreg.action_required.json")).await;
    smtp.wait_for(5, Duration::from_secs(20)).await;
    worker
        .wait_settled(support::directory_events().len() + 2, Duration::from_secs(20))
        .await;
    let addr = &worker.http;
    let cara = jwt("nw-cara", JWT_SECRET, 600);
    let amy = jwt("fab-amy", JWT_SECRET, 600);

    let (status, body) = get(addr, "/api/v1/action-center/entries", Some(&cara)).await;
    assert_eq!(status, 200, "{body}");
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{body}");
    assert_eq!(entries[0]["user"], "nw-cara");
    assert_eq!(entries[0]["notification"], "cosell-incoming-opportunity");
    assert!(entries[0]["link"].as_str().unwrap().starts_with("https://"));
    let cara_entry = entries[0]["id"].as_str().unwrap().to_string();

    let (_, body) = get(addr, "/api/v1/action-center/entries", Some(&amy)).await;
    let amys = body["entries"].as_array().unwrap();
    assert_eq!(amys.len(), 1, "{body}");
    assert!(amys.iter().all(|e| e["user"] == "fab-amy"));
    assert_eq!(
        get(addr, "/api/v1/action-center/unread-count", Some(&amy)).await.1["unread"],
        1
    );

    // Amy cannot mark Cara's entry; Cara can.
    let path = format!("/api/v1/action-center/entries/{cara_entry}/read");
    assert_eq!(http(addr, "POST", &path, Some(&amy)).await.unwrap().0, 404);
    // Someone else's entry and an entry that does not exist look the same.
    let theirs = http(addr, "POST", &path, Some(&amy)).await.unwrap();
    let nobodys = http(
        addr,
        "POST",
        "/api/v1/action-center/entries/no-such-entry/read",
        Some(&amy),
    )
    .await
    .unwrap();
    assert_eq!(theirs, nobodys, "a 404 must not tell whether the entry exists");
    assert_eq!(
        get(addr, "/api/v1/action-center/unread-count", Some(&cara)).await.1["unread"],
        1
    );
    assert_eq!(http(addr, "POST", &path, Some(&cara)).await.unwrap().0, 204);
    assert_eq!(
        get(addr, "/api/v1/action-center/unread-count", Some(&cara)).await.1["unread"],
        0
    );
    let (_, body) = get(addr, "/api/v1/action-center/entries?unread=true", Some(&cara)).await;
    assert_eq!(body["entries"].as_array().unwrap().len(), 0);

    // No token, a forged one, an expired one, garbage: 401.
    for bad in [
        None,
        Some(jwt("nw-cara", "not-the-secret", 600)),
        Some(jwt("nw-cara", JWT_SECRET, -3600)),
        Some("garbage".to_string()),
    ] {
        let (status, _) = get(addr, "/api/v1/action-center/entries", bad.as_deref()).await;
        assert_eq!(status, 401, "token {bad:?}");
    }

    // Entries were published to the portal's exchange too (Cara, Ida, Amy, Ben).
    let published = broker.take(&probe, 4, Duration::from_secs(10)).await;
    assert_eq!(published.len(), 4);
    let first: Value = serde_json::from_slice(&published[0]).unwrap();
    assert!(first["id"].is_string() && first["title"].is_string(), "{first}");
    broker.cleanup().await;
}

async fn health_readiness_and_metrics(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, _smtp, worker) = support::start("health", backend, &[]).await;
    assert_eq!(http(&worker.http, "GET", "/healthz", None).await.unwrap().0, 200);
    let (status, body) = http(&worker.http, "GET", "/readyz", None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = http(&worker.http, "GET", "/metrics", None).await.unwrap();
    for name in [
        "router_messages_consumed_total",
        "router_rules_info{hash=",
        "router_processing_seconds_bucket",
        "router_broker_connected 1",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    broker.cleanup().await;
}
