//! Consume and ack: a supervisor that (re)connects, declares the topology and
//! subscribes; bounded concurrent handling of deliveries; and the one place a
//! message is settled (ack, dead-letter with a reason, or requeue). A panic
//! while handling a message is caught, counted and retried like an outage:
//! the message is always settled.

mod gate;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::broker::{self, PublishError, Publisher};
use crate::config::{Amqp, Retry};
use crate::decode::{decode_message, event_id_of};
use crate::error::{Disposition, ProcessError};
use crate::event::Event;
use crate::flow::Flow;
use crate::telemetry::Metrics;
use gate::{Gate, Turn};

/// The consuming stage: what it needs to take messages, hand them to the
/// flow and settle them.
pub struct Consumer {
    pub amqp: Amqp,
    pub retry: Retry,
    /// Waits on another worker's copy of an event are bounded by its lease.
    pub lease: Duration,
    /// How long a shutdown waits for in-flight messages before giving them back to the broker.
    pub drain_timeout: Duration,
    pub flow: Arc<Flow>,
    pub publisher: Publisher,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    gate: Gate,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl Consumer {
    pub fn new(
        amqp: Amqp,
        retry: Retry,
        lease: Duration,
        drain_timeout: Duration,
        flow: Arc<Flow>,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> Self {
        let metrics = flow.metrics.clone();
        Self {
            amqp,
            retry,
            lease,
            drain_timeout,
            flow,
            publisher,
            metrics,
            shutdown,
            gate: Gate::default(),
        }
    }

    /// Runs until the shutdown token fires, reconnecting whenever the connection
    /// or the subscription is lost; then drains in-flight work, for at most
    /// the drain timeout.
    pub async fn run(self: Arc<Self>) {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.amqp.concurrency));
        let (min, max) = (self.amqp.reconnect_min, self.amqp.reconnect_max);
        let mut backoff = min;
        loop {
            match self.session(&tracker, &permits).await {
                // Drained already, while the connection could still settle messages.
                Ok(SessionEnd::Shutdown) => return info!("consumer stopped"),
                Ok(SessionEnd::Lost(reason)) => {
                    warn!(%reason, "lost the broker subscription; reconnecting");
                    backoff = min;
                }
                Err(e) => {
                    warn!(error = %e, url = %self.amqp.redacted_url(), retry_in = ?backoff, "broker unavailable")
                }
            }
            self.publisher.detach();
            self.metrics.broker_connected.set(0);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(max);
        }
        self.drain(&tracker).await;
        info!("consumer stopped");
    }

    /// Waits for in-flight messages, at most the drain timeout: what is still
    /// unsettled then is redelivered by the broker once this process is gone.
    async fn drain(&self, tracker: &TaskTracker) {
        tracker.close();
        if tokio::time::timeout(self.drain_timeout, tracker.wait()).await.is_err() {
            warn!(timeout = ?self.drain_timeout, in_flight = tracker.len(),
                  "in-flight messages did not finish in time; the broker redelivers them");
        } else {
            info!("in-flight work drained");
        }
    }

    async fn session(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        permits: &Arc<Semaphore>,
    ) -> Result<SessionEnd, broker::ConnectError> {
        let amqp = &self.amqp;
        let conn = broker::connect(amqp).await?;
        let channel = conn.create_channel().await?;
        broker::declare_topology(&channel, amqp).await?;
        // Prefetch bounds how many unacked messages the broker pushes to us; the
        // semaphore bounds how many are processed at once (concurrency <= prefetch).
        channel.basic_qos(amqp.prefetch, BasicQosOptions::default()).await?;
        self.publisher.attach(&conn).await?;
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
        self.metrics.broker_connected.set(1);
        info!(queue = %amqp.queue, exchange = %amqp.exchange, prefetch = amqp.prefetch, "consuming");
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    info!("stopping: no new messages; draining in-flight work");
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    self.drain(tracker).await;
                    let _ = conn.close(200, "shutting down".into()).await;
                    return Ok(SessionEnd::Shutdown);
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => self.take(tracker, permits, delivery).await,
                    Some(Err(e)) => return Ok(SessionEnd::Lost(e.to_string())),
                    None => return Ok(SessionEnd::Lost("the broker cancelled the consumer".into())),
                }
            }
        }
    }

    /// Hands a message to a task once a permit and its turn in order are free.
    async fn take(self: &Arc<Self>, tracker: &TaskTracker, permits: &Arc<Semaphore>, delivery: Delivery) {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            // Unacked, so the broker redelivers it once we are gone.
            () = self.shutdown.cancelled() => return,
        };
        let turn = tokio::select! {
            t = self.gate.turn(delivery.routing_key.as_str()) => t,
            () = self.shutdown.cancelled() => return,
        };
        tracker.spawn(self.clone().handle(delivery, (permit, turn)));
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.retry
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.retry.max_backoff)
    }

    async fn handle(self: Arc<Self>, delivery: Delivery, _held: (OwnedSemaphorePermit, Turn)) {
        let started = Instant::now();
        self.metrics.consumed.inc();
        if delivery.redelivered {
            self.metrics.redelivered.inc();
        }
        let outcome = match AssertUnwindSafe(self.outcome(&delivery)).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => {
                error!(panic = %panic_text(panic.as_ref()), "handling a message panicked; the broker delivers it again");
                self.metrics.panics.inc();
                Disposition::Requeue
            }
        };
        self.settle(delivery, outcome).await;
        self.metrics.latency.observe(started.elapsed().as_secs_f64());
    }

    /// Decodes the message and processes its event.
    async fn outcome(&self, delivery: &Delivery) -> Disposition {
        match decode_message(&delivery.properties, &delivery.data, self.amqp.max_message_bytes) {
            Err(e) => ProcessError::Decode(e).disposition(),
            Ok(event) => {
                let span = info_span!("event", event_id = %event.id, event_type = %event.event_type);
                self.process(&event).instrument(span).await
            }
        }
    }

    /// Processes one event until it is done, it must go to the dead-letter
    /// queue, or the worker stops; transient failures and panics are retried
    /// with backoff, a bounded number of times.
    async fn process(&self, event: &Event) -> Disposition {
        let _mine = self.gate.own(event.id.as_str()).await;
        let mut attempt = 1;
        loop {
            let Err(e) = self.attempt(event).await else {
                return Disposition::Ack;
            };
            match e.disposition() {
                Disposition::Later(_) | Disposition::Retry(_) if self.shutdown.is_cancelled() => {
                    warn!(error = %e, "shutting down: leaving it to a later delivery");
                    return Disposition::Requeue;
                }
                Disposition::Later(wait) => {
                    // Bounded by the other worker's lease: it finishes, or its lease runs out.
                    if !self.pause(wait.min(self.lease)).await {
                        return Disposition::Requeue;
                    }
                }
                Disposition::Retry(why) if attempt < self.retry.max_attempts => {
                    let wait = self.backoff(attempt);
                    warn!(error = %why, attempt, retry_in = ?wait, "transient failure");
                    self.metrics.retries.inc();
                    if !self.pause(wait).await {
                        return Disposition::Requeue;
                    }
                    attempt += 1;
                }
                Disposition::Retry(why) => {
                    return Disposition::DeadLetter {
                        reason: "retries_exhausted".into(),
                        detail: format!("after {attempt} attempts: {why}"),
                    };
                }
                other => return other,
            }
        }
    }

    /// One try at an event; a panic inside is caught and counted, and becomes a failure to retry.
    async fn attempt(&self, event: &Event) -> Result<(), ProcessError> {
        match AssertUnwindSafe(self.flow.process(event)).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                let what = panic_text(panic.as_ref());
                error!(panic = %what, "processing panicked; the event is retried");
                self.metrics.panics.inc();
                Err(ProcessError::Panicked(what))
            }
        }
    }

    /// Sleeps for `wait`; false when shutdown came first.
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.shutdown.cancelled() => false,
        }
    }

    async fn settle(&self, delivery: Delivery, outcome: Disposition) {
        let result = match &outcome {
            Disposition::Ack => delivery.ack(BasicAckOptions::default()).await.map(|_| "ack"),
            Disposition::Retry(_) | Disposition::Later(_) | Disposition::Requeue => requeue(&delivery).await,
            Disposition::DeadLetter { reason, detail } => {
                error!(%reason, %detail, routing_key = %delivery.routing_key, "dead-lettering a message");
                match self.dead_letter(&delivery, reason, detail).await {
                    Ok(()) => {
                        self.metrics.dead_lettered.with_label_values(&[reason]).inc();
                        self.remember_dead_letter(&delivery, reason, detail).await;
                        delivery.ack(BasicAckOptions::default()).await.map(|_| "dead_letter")
                    }
                    Err(e) => {
                        error!(error = %e, "cannot dead-letter; the broker will redeliver it");
                        requeue(&delivery).await
                    }
                }
            }
        };
        match result {
            Ok(label) => self.metrics.settled.with_label_values(&[label]).inc(),
            // The channel is gone: the broker requeues the message and we see it again.
            Err(e) => warn!(error = %e, "could not settle a message; it will be redelivered"),
        }
    }

    /// Notes the dead letter under its event id, so `log --event` can tell it.
    async fn remember_dead_letter(&self, delivery: &Delivery, reason: &str, detail: &str) {
        let Some(id) = event_id_of(&delivery.properties, &delivery.data, self.amqp.max_message_bytes) else {
            return;
        };
        if let Err(e) = self.flow.store.record_dead_letter(&id, reason, detail).await {
            warn!(error = %e, event_id = %id, "could not note the dead letter in the store; it is in the dead-letter queue");
        }
    }

    /// Publishes a copy, with the reason in headers, to the dead-letter exchange
    /// (routed to this worker's dead-letter queue) and waits for the confirm.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str, detail: &str) -> Result<(), PublishError> {
        let amqp = &self.amqp;
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert("x-router-reason".into(), text(reason));
        headers.insert("x-router-error".into(), text(detail));
        headers.insert("x-router-queue".into(), text(&amqp.queue));
        headers.insert("x-router-routing-key".into(), text(delivery.routing_key.as_str()));
        let props = delivery.properties.clone().with_headers(headers);
        self.publisher
            .publish(&amqp.dead_letter_exchange, &amqp.queue, &delivery.data, props)
            .await
    }
}

async fn requeue(delivery: &Delivery) -> lapin::Result<&'static str> {
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .map(|_| "requeue")
}

/// What a panic said, when it said it with text.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
