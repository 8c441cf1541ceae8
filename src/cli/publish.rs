//! `publish`: puts example events on the broker, for trying the worker locally.

use std::path::PathBuf;

use lapin::BasicProperties;

use crate::broker::{self, Publisher};
use crate::config::Amqp;

/// Publishes every structured CloudEvent in `files` (`.json`: one event;
/// `.jsonl`: one per line) to the events exchange, routed by type, with confirms.
pub async fn run(amqp: &Amqp, files: &[PathBuf]) -> Result<usize, String> {
    let conn = broker::connect(amqp)
        .await
        .map_err(|e| format!("cannot reach {}: {e}", amqp.redacted_url()))?;
    let publisher = Publisher::default();
    publisher.attach(&conn).await.map_err(|e| e.to_string())?;
    let mut count = 0;
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let bodies: Vec<&str> = if file.extension().is_some_and(|e| e == "jsonl") {
            text.lines()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .collect()
        } else {
            vec![text.as_str()]
        };
        for body in bodies {
            let value: serde_json::Value =
                serde_json::from_str(body).map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
            let key = value["type"]
                .as_str()
                .ok_or_else(|| format!("{}: no `type`", file.display()))?;
            let props = BasicProperties::default().with_content_type("application/cloudevents+json".into());
            publisher
                .publish(&amqp.exchange, key, body.as_bytes(), props)
                .await
                .map_err(|e| e.to_string())?;
            count += 1;
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(count)
}
