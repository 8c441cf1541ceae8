//! One event through the flow: decode -> route -> admit (durable) -> render ->
//! dispatch. Acking is the caller's job, once this returns `Ok`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use tracing::{info, warn};

use crate::app::App;
use crate::decode::{Attributes, DecodeError, decode_binary, decode_structured};
use crate::dispatch::{action_center, email};
use crate::error::ProcessError;
use crate::event::{Event, EventId};
use crate::render::{Rendered, Session, build_email, message_id};
use crate::route::rules::Channel;
use crate::route::{Decision, DigestKey, Plan, route};
use crate::store::{Admission, OutboxItem};

fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    let inner = headers.inner();
    let value = ["cloudEvents:", "cloudEvents_"]
        .iter()
        .find_map(|prefix| inner.get(format!("{prefix}{name}").as_str()))?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::Timestamp(t) => DateTime::<Utc>::from_timestamp(i64::try_from(*t).ok()?, 0).map(|t| t.to_rfc3339()),
        _ => None,
    }
}

/// Decodes a message in either CloudEvents mode: binary when the
/// `cloudEvents:*` headers carry the attributes, structured otherwise.
pub fn decode_message(properties: &BasicProperties, body: &[u8]) -> Result<Event, DecodeError> {
    let Some(headers) = properties
        .headers()
        .as_ref()
        .filter(|h| header_text(h, "specversion").is_some())
    else {
        return decode_structured(body);
    };
    let required = |name: &str| {
        header_text(headers, name)
            .ok_or_else(|| DecodeError::NotCloudEvent(format!("missing header cloudEvents:{name}")))
    };
    let time = required("time")?;
    let attributes = Attributes {
        specversion: required("specversion")?,
        id: EventId::new(required("id")?),
        source: required("source")?,
        event_type: required("type")?,
        time: DateTime::parse_from_rfc3339(&time)
            .map_err(|e| DecodeError::NotCloudEvent(format!("cloudEvents:time `{time}`: {e}")))?
            .with_timezone(&Utc),
        subject: header_text(headers, "subject"),
    };
    if attributes.id.as_str().trim().is_empty() {
        return Err(DecodeError::NotCloudEvent("cloudEvents:id is empty".into()));
    }
    decode_binary(attributes, body)
}

/// Routes, records and dispatches one decoded event. Safe to call again for
/// the same event, from any worker: what was recorded is not recorded twice,
/// what went out is not sent again, and while one worker holds the event's
/// lease the others get [`ProcessError::Busy`].
pub async fn process(app: &App, event: &Event) -> Result<(), ProcessError> {
    app.refresh_directory().await?;
    let active = app.active();
    let state = app.store.state_for(event).await?;
    let counters = {
        let dir = app.directory();
        route(event, &active.rules, &*dir, &state).counters
    };
    let captured: Mutex<Option<Plan>> = Mutex::new(None);
    let planner = |positions: &[(DigestKey, u32)]| {
        let mut state = state.clone();
        for (key, position) in positions {
            state.set_count(key.clone(), *position);
        }
        let plan = {
            let dir = app.directory();
            route(event, &active.rules, &*dir, &state)
        };
        *captured.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan.clone());
        plan
    };
    let items = match app.store.admit(event, &counters, &planner).await? {
        Admission::Done => {
            app.metrics.duplicates.inc();
            info!("already processed: nothing to do");
            return Ok(());
        }
        Admission::Busy { retry_in } => {
            info!(?retry_in, "another worker holds this event; waiting for it");
            return Err(ProcessError::Busy(retry_in));
        }
        Admission::Pending { fresh, items } => {
            if fresh {
                let plan = captured
                    .into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_default();
                log_plan(app, &plan);
            } else {
                info!(pending = items.len(), "resuming an event seen before");
            }
            items
        }
    };
    app.metrics.routed.with_label_values(&[event.event_type.as_str()]).inc();
    let outcome = dispatch_all(app, &active, event, items).await;
    if outcome.is_err() {
        // Hand the event back at once: a copy redelivered to another worker need not wait for the lease.
        if let Err(e) = app.store.release(event.id.as_str()).await {
            warn!(error = %e, "could not release the event's lease; it runs out by itself");
        }
    }
    outcome
}

/// Sends the deliveries admission claimed for this worker, then marks the event done.
async fn dispatch_all(
    app: &App,
    active: &crate::app::Active,
    event: &Event,
    items: Vec<OutboxItem>,
) -> Result<(), ProcessError> {
    // One session per event: what all recipients share is rendered once.
    let mut session = active.templates.session(event);
    let mut renewed = Instant::now();
    for item in items {
        if !still_ours(app, &item, &mut renewed).await? {
            continue;
        }
        dispatch(app, active, event, &mut session, item, &mut renewed).await?;
    }
    if !app.store.complete(event.id.as_str()).await? {
        // Another worker still sends some of it: come back and see it done.
        return Err(ProcessError::Busy(Duration::from_millis(500)));
    }
    Ok(())
}

/// Whether this worker may still send `item`. A long event renews its claims
/// as it goes (once more than a third of the lease has passed since the last
/// renewal), and gives up a delivery whose claim another worker took over.
async fn still_ours(app: &App, item: &OutboxItem, renewed: &mut Instant) -> Result<bool, ProcessError> {
    if renewed.elapsed() <= app.settings.store.lease / 3 {
        return Ok(true);
    }
    if !app.store.claim_delivery(item.log_id).await? {
        info!(notification = %item.delivery.notification, recipient = %item.delivery.recipient.email,
              "sent or being sent by another worker");
        return Ok(false);
    }
    *renewed = Instant::now();
    Ok(true)
}

fn log_plan(app: &App, plan: &Plan) {
    for d in &plan.deliveries {
        let outcome = match d.decision {
            Decision::Send => continue,
            Decision::Hold => "held",
            Decision::Suppress => "suppressed",
        };
        app.metrics
            .deliveries
            .with_label_values(&[&d.channel.to_string(), outcome])
            .inc();
        info!(
            notification = %d.notification,
            channel = %d.channel,
            recipient = %d.recipient.email,
            rules = ?d.rules,
            outcome,
            "not sent now"
        );
    }
}

async fn dispatch(
    app: &App,
    active: &crate::app::Active,
    event: &Event,
    session: &mut Session<'_>,
    item: OutboxItem,
    renewed: &mut Instant,
) -> Result<(), ProcessError> {
    let d = &item.delivery;
    let channel = d.channel.to_string();
    let failed = |error: String| async move {
        warn!(notification = %d.notification, channel = %d.channel, recipient = %d.recipient.email,
              rules = ?d.rules, %error, "delivery failed for good");
        app.metrics
            .deliveries
            .with_label_values(&[d.channel.to_string().as_str(), "failed"])
            .inc();
        app.store.mark_failed(item.log_id, &error).await
    };
    let sent_id = match d.channel {
        Channel::Email => {
            let email = match session.render(d) {
                Ok(Rendered::Email(e)) => e,
                Ok(Rendered::ActionCenter(_)) => return Ok(failed("rendered for the wrong channel".into()).await?),
                Err(e) => return Ok(failed(format!("rendering: {e}")).await?),
            };
            let id = message_id(
                &event.id,
                &d.notification,
                &d.recipient.email,
                app.sender.from.email.domain(),
            );
            let unsubscribe = active
                .rules
                .notifications
                .get(&d.notification)
                .is_some_and(|n| n.optional)
                .then_some(app.settings.mail.unsubscribe_url.as_str());
            let message = match build_email(&email, &app.sender, &d.recipient, &id, unsubscribe, event.id.as_str()) {
                Ok(m) => m,
                Err(e) => return Ok(failed(e.to_string()).await?),
            };
            let sent = match app.mailer.stage(message).await {
                Ok(staged) => {
                    let turn = app.mailer.turn().await.map_err(|e| ProcessError::Mail(e.to_string()))?;
                    // Staging and the wait for a turn can be long: the claim must still be ours to send.
                    if !still_ours(app, &item, renewed).await? {
                        return Ok(());
                    }
                    staged.finish().await.map(|()| turn)
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(turn) => {
                    // Recorded before the turn is given up: see `smtp.max_in_flight`.
                    app.store.mark_sent(event.id.as_str(), item.log_id, Some(&id)).await?;
                    drop(turn);
                    app.metrics.deliveries.with_label_values(&[&channel, "sent"]).inc();
                    info!(notification = %d.notification, channel = %d.channel, recipient = %d.recipient.email,
                          rules = ?d.rules, id = %id, "sent");
                    return Ok(());
                }
                Err(email::SendError::Permanent(e)) => return Ok(failed(e).await?),
                Err(email::SendError::Transient(e)) => {
                    app.store.note_attempt(item.log_id, &e).await?;
                    return Err(ProcessError::Mail(e));
                }
            }
        }
        Channel::ActionCenter => {
            let content = match session.render(d) {
                Ok(Rendered::ActionCenter(c)) => c,
                Ok(Rendered::Email(_)) => return Ok(failed("rendered for the wrong channel".into()).await?),
                Err(e) => return Ok(failed(format!("rendering: {e}")).await?),
            };
            let spec = active
                .rules
                .notifications
                .get(&d.notification)
                .and_then(|n| n.action_center.as_ref());
            let entry = action_center::entry(event, d, content, spec);
            app.store.put_entry(&entry).await?;
            let payload = serde_json::to_vec(&entry).unwrap_or_default();
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(entry.id.as_str().into());
            let key = format!("{}.{}", entry.category, entry.notification);
            if let Err(e) = app
                .publisher
                .publish(&app.settings.amqp.action_center_exchange, &key, &payload, props)
                .await
            {
                app.store.note_attempt(item.log_id, &e).await?;
                return Err(ProcessError::Broker(e));
            }
            entry.id
        }
    };
    app.store
        .mark_sent(event.id.as_str(), item.log_id, Some(&sent_id))
        .await?;
    app.metrics.deliveries.with_label_values(&[&channel, "sent"]).inc();
    info!(notification = %d.notification, channel = %d.channel, recipient = %d.recipient.email,
          rules = ?d.rules, id = %sent_id, "sent");
    Ok(())
}
