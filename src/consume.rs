//! Consume and ack: a supervisor that (re)connects, declares the topology and
//! subscribes; bounded concurrent handling of deliveries; and the one place a
//! message is settled (ack, dead-letter with a reason, or requeue).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::app::App;
use crate::broker;
use crate::error::{Disposition, ProcessError};
use crate::flow;

enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Runs until the shutdown token fires, reconnecting whenever the connection
/// or the subscription is lost; then drains in-flight work.
pub async fn run(app: Arc<App>) {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(app.settings.amqp.concurrency));
    let (min, max) = (app.settings.amqp.reconnect_min, app.settings.amqp.reconnect_max);
    let mut backoff = min;
    loop {
        match session(&app, &tracker, &permits).await {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Lost(reason)) => {
                warn!(%reason, "lost the broker subscription; reconnecting");
                backoff = min;
            }
            Err(e) => {
                warn!(error = %e, url = %app.settings.amqp.redacted_url(), retry_in = ?backoff, "broker unavailable")
            }
        }
        app.publisher.detach();
        app.metrics.broker_connected.set(0);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = app.shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(max);
    }
    tracker.close();
    tracker.wait().await;
    info!("consumer stopped; in-flight work drained");
}

async fn session(app: &Arc<App>, tracker: &TaskTracker, permits: &Arc<Semaphore>) -> lapin::Result<SessionEnd> {
    let amqp = &app.settings.amqp;
    let conn = broker::connect(amqp).await?;
    let channel = conn.create_channel().await?;
    broker::declare_topology(&channel, amqp).await?;
    // Prefetch bounds how many unacked messages the broker pushes to us; the
    // semaphore bounds how many are processed at once (concurrency <= prefetch).
    channel.basic_qos(amqp.prefetch, BasicQosOptions::default()).await?;
    app.publisher.attach(&conn).await?;
    let tag = format!("referral-router-{}", std::process::id());
    let mut consumer = channel
        .basic_consume(
            amqp.queue.as_str().into(),
            tag.as_str().into(),
            // Manual acks: a message is acked only once its effects are durable.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    app.metrics.broker_connected.set(1);
    info!(queue = %amqp.queue, exchange = %amqp.exchange, prefetch = amqp.prefetch, "consuming");
    loop {
        tokio::select! {
            () = app.shutdown.cancelled() => {
                info!("stopping: no new messages; draining in-flight work");
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                tracker.close();
                tracker.wait().await;
                let _ = conn.close(200, "shutting down".into()).await;
                return Ok(SessionEnd::Shutdown);
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let permit = tokio::select! {
                        p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                        // Unacked, so the broker redelivers it once we are gone.
                        () = app.shutdown.cancelled() => continue,
                    };
                    let order = tokio::select! {
                        o = in_order(app, &delivery) => o,
                        () = app.shutdown.cancelled() => continue,
                    };
                    tracker.spawn(handle(app.clone(), delivery, (permit, order)));
                }
                Some(Err(e)) => return Ok(SessionEnd::Lost(e.to_string())),
                None => return Ok(SessionEnd::Lost("the broker cancelled the consumer".into())),
            }
        }
    }
}

/// A turn in the ordering gate (see [`App::order`]), held until the message is settled.
enum Turn {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

async fn in_order(app: &App, delivery: &Delivery) -> Turn {
    // The routing key is the event type by contract; a lying key only costs ordering, not correctness.
    if delivery.routing_key.as_str().starts_with("directory.") {
        Turn::Exclusive(app.order.clone().write_owned().await)
    } else {
        Turn::Shared(app.order.clone().read_owned().await)
    }
}

fn backoff(app: &App, attempt: u32) -> Duration {
    let retry = &app.settings.retry;
    retry
        .initial_backoff
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(retry.max_backoff)
}

async fn handle(app: Arc<App>, delivery: Delivery, _held: (OwnedSemaphorePermit, Turn)) {
    let started = Instant::now();
    app.metrics.consumed.inc();
    if delivery.redelivered {
        app.metrics.redelivered.inc();
    }
    let max = app.settings.amqp.max_message_bytes;
    let decoded = if delivery.data.len() > max {
        Err(crate::decode::DecodeError::TooLarge {
            size: delivery.data.len(),
            max,
        })
    } else {
        flow::decode_message(&delivery.properties, &delivery.data)
    };
    let outcome = match decoded {
        Err(e) => ProcessError::Decode(e).disposition(),
        Ok(event) => {
            let span = info_span!("event", event_id = %event.id, event_type = %event.event_type);
            async {
                let _claim = app.claim(event.id.as_str()).await;
                let mut attempt = 1;
                loop {
                    let Err(e) = flow::process(&app, &event).await else {
                        break Disposition::Ack;
                    };
                    match e.disposition() {
                        Disposition::Later(_) | Disposition::Retry(_) if app.shutdown.is_cancelled() => {
                            warn!(error = %e, "shutting down: leaving it to a later delivery");
                            break Disposition::Requeue;
                        }
                        Disposition::Later(wait) => {
                            // Bounded by the other worker's lease: it finishes, or its lease runs out.
                            tokio::select! {
                                () = tokio::time::sleep(wait.min(app.settings.store.lease)) => {}
                                () = app.shutdown.cancelled() => break Disposition::Requeue,
                            }
                        }
                        Disposition::Retry(why) if attempt < app.settings.retry.max_attempts => {
                            let wait = backoff(&app, attempt);
                            warn!(error = %why, attempt, retry_in = ?wait, "transient failure");
                            app.metrics.retries.inc();
                            tokio::select! {
                                () = tokio::time::sleep(wait) => {}
                                () = app.shutdown.cancelled() => break Disposition::Requeue,
                            }
                            attempt += 1;
                        }
                        Disposition::Retry(why) => {
                            break Disposition::DeadLetter {
                                reason: "retries_exhausted".into(),
                                detail: format!("after {attempt} attempts: {why}"),
                            };
                        }
                        other => break other,
                    }
                }
            }
            .instrument(span)
            .await
        }
    };
    settle(&app, delivery, outcome).await;
    app.metrics.latency.observe(started.elapsed().as_secs_f64());
}

async fn settle(app: &App, delivery: Delivery, outcome: Disposition) {
    let result = match &outcome {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await.map(|_| "ack"),
        Disposition::Retry(_) | Disposition::Later(_) | Disposition::Requeue => delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map(|_| "requeue"),
        Disposition::DeadLetter { reason, detail } => {
            error!(%reason, %detail, routing_key = %delivery.routing_key, "dead-lettering a message");
            match dead_letter(app, &delivery, reason, detail).await {
                Ok(()) => {
                    app.metrics.dead_lettered.with_label_values(&[reason]).inc();
                    delivery.ack(BasicAckOptions::default()).await.map(|_| "dead_letter")
                }
                Err(e) => {
                    error!(error = %e, "cannot dead-letter; the broker will redeliver it");
                    delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await
                        .map(|_| "requeue")
                }
            }
        }
    };
    match result {
        Ok(label) => app.metrics.settled.with_label_values(&[label]).inc(),
        // The channel is gone: the broker requeues the message and we see it again.
        Err(e) => warn!(error = %e, "could not settle a message; it will be redelivered"),
    }
}

/// Publishes a copy, with the reason in headers, to the dead-letter exchange
/// (routed to this worker's dead-letter queue) and waits for the confirm.
async fn dead_letter(app: &App, delivery: &Delivery, reason: &str, detail: &str) -> Result<(), String> {
    let amqp = &app.settings.amqp;
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    headers.insert("x-router-reason".into(), text(reason));
    headers.insert("x-router-error".into(), text(detail));
    headers.insert("x-router-queue".into(), text(&amqp.queue));
    headers.insert("x-router-routing-key".into(), text(delivery.routing_key.as_str()));
    let props = delivery.properties.clone().with_headers(headers);
    app.publisher
        .publish(&amqp.dead_letter_exchange, &amqp.queue, &delivery.data, props)
        .await
}
