//! `dlq list` and `dlq replay`: what is in the dead-letter queue and why, and
//! putting messages back on the events exchange once their cause is fixed
//! (a rule or template corrected, an outage over).

use std::fmt::Write;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, message::BasicGetMessage};

use crate::broker::{self, Publisher};
use crate::config::Amqp;

fn text(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    }
}

/// Takes up to `limit` dead letters without acking them: when the channel
/// closes, the broker puts back every one not acked.
async fn take(channel: &lapin::Channel, queue: &str, limit: usize) -> Result<Vec<BasicGetMessage>, String> {
    let mut out = Vec::new();
    while out.len() < limit {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| format!("reading {queue}: {e}"))?
        {
            Some(msg) => out.push(msg),
            None => break,
        }
    }
    Ok(out)
}

/// Lists dead letters (left in the queue) with their reason, error and routing key.
pub async fn list(amqp: &Amqp, limit: usize) -> Result<String, String> {
    let conn = broker::connect(amqp)
        .await
        .map_err(|e| format!("cannot reach {}: {e}", amqp.redacted_url()))?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    let queue = amqp.dead_letter_queue();
    let messages = take(&channel, &queue, limit).await?;
    let mut out = format!("{} dead letter(s) in {queue}", messages.len());
    if messages.len() == limit {
        out.push_str(" (the first ones; raise --limit for more)");
    }
    out.push('\n');
    for m in &messages {
        let headers = m.delivery.properties.headers().clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<18} {:<36} {} bytes  {}",
            text(&headers, "x-router-reason").unwrap_or_else(|| "-".into()),
            text(&headers, "x-router-routing-key").unwrap_or_else(|| "-".into()),
            m.delivery.data.len(),
            text(&headers, "x-router-error").unwrap_or_default()
        );
    }
    let _ = conn.close(200, "listed".into()).await;
    Ok(out)
}

/// Republishes dead letters (those with `reason`, or all) to the events
/// exchange under their original routing key, with a publisher confirm, and
/// only then removes each from the dead-letter queue. Replaying is safe: an
/// event the worker already handled sends nothing twice.
pub async fn replay(amqp: &Amqp, reason: Option<&str>, limit: usize) -> Result<String, String> {
    let conn = broker::connect(amqp)
        .await
        .map_err(|e| format!("cannot reach {}: {e}", amqp.redacted_url()))?;
    let publisher = Publisher::default();
    publisher.attach(&conn).await.map_err(|e| e.to_string())?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    let queue = amqp.dead_letter_queue();
    let (mut replayed, mut kept) = (0, 0);
    for m in take(&channel, &queue, limit).await? {
        let mut headers = m.delivery.properties.headers().clone().unwrap_or_default();
        let why = text(&headers, "x-router-reason");
        if reason.is_some_and(|r| why.as_deref() != Some(r)) {
            kept += 1;
            continue;
        }
        let key = text(&headers, "x-router-routing-key").unwrap_or_else(|| m.delivery.routing_key.to_string());
        let mut clean = FieldTable::default();
        for (k, v) in headers.inner().iter() {
            if !k.as_str().starts_with("x-router-") && !k.as_str().starts_with("x-death") {
                clean.insert(k.clone(), v.clone());
            }
        }
        headers = clean;
        let props = BasicProperties::default()
            .with_content_type(
                m.delivery
                    .properties
                    .content_type()
                    .clone()
                    .unwrap_or_else(|| "application/cloudevents+json".into()),
            )
            .with_headers(headers);
        publisher
            .publish(&amqp.exchange, &key, &m.delivery.data, props)
            .await
            .map_err(|e| e.to_string())?;
        m.delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| format!("removing a replayed dead letter: {e}"))?;
        replayed += 1;
    }
    let _ = conn.close(200, "replayed".into()).await;
    Ok(format!(
        "replayed {replayed} dead letter(s) to {}; left {kept} in {queue}",
        amqp.exchange
    ))
}
