//! One event through the flow: route -> admit (durable) -> render ->
//! dispatch. Decoding comes before it and acking after, in `consume`.

mod directory;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

pub use directory::DirectoryCache;

use crate::dispatch::{Dispatcher, EventSend};
use crate::error::ProcessError;
use crate::event::Event;
use crate::route::{Decision, DigestKey, MemoryState, Plan, route};
use crate::serving::{Serving, ServingSet};
use crate::store::{Admission, OutboxItem, Store};
use crate::telemetry::Metrics;

/// What routing and sending one event needs.
pub struct Flow {
    pub store: Arc<dyn Store>,
    pub serving: Arc<Serving>,
    pub directory: DirectoryCache,
    pub dispatcher: Dispatcher,
    pub metrics: Metrics,
}

impl Flow {
    /// Routes, records and dispatches one decoded event. Safe to call again for
    /// the same event, from any worker: what was recorded is not recorded twice,
    /// what went out is not sent again, and while one worker holds the event's
    /// lease the others get [`ProcessError::Busy`].
    pub async fn process(&self, event: &Event) -> Result<(), ProcessError> {
        self.directory.refresh(&*self.store).await?;
        let serving = self.serving.current();
        let Some(items) = self.admit(event, &serving).await? else {
            return Ok(());
        };
        self.metrics
            .routed
            .with_label_values(&[event.event_type.as_str()])
            .inc();
        #[cfg(debug_assertions)]
        injected_panic(event);
        let outcome = self.dispatch_all(&serving, event, items).await;
        if outcome.is_err() {
            // Hand the event back at once: a copy redelivered to another worker need not wait for the lease.
            if let Err(e) = self.store.release(event.id.as_str()).await {
                warn!(error = %e, "could not release the event's lease; it runs out by itself");
            }
        }
        outcome
    }

    /// Routes the event and records it with the store; the deliveries this
    /// worker must now send, or `None` when there is nothing left to do.
    async fn admit(&self, event: &Event, serving: &ServingSet) -> Result<Option<Vec<OutboxItem>>, ProcessError> {
        let state = self.store.state_for(event).await?;
        let first = route(event, &serving.rules, &*self.directory.read(), &state);
        let counters = first.counters.clone();
        let captured: Mutex<Option<Plan>> = Mutex::new(None);
        let planner = |positions: &[(DigestKey, u32)]| {
            // Nothing counted: the plan is the one just made (most events).
            let plan = if positions.is_empty() && counters.is_empty() {
                first.clone()
            } else {
                self.plan(event, serving, &state, positions)
            };
            *captured.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan.clone());
            plan
        };
        match self.store.admit(event, &counters, &planner).await? {
            Admission::Done => {
                self.metrics.duplicates.inc();
                info!("already processed: nothing to do");
                Ok(None)
            }
            Admission::Busy { retry_in } => {
                info!(?retry_in, "another worker holds this event; waiting for it");
                Err(ProcessError::Busy(retry_in))
            }
            Admission::Pending { fresh: true, items } => {
                let plan = captured.into_inner().unwrap_or_else(|e| e.into_inner());
                self.log_plan(&plan.unwrap_or_default());
                Ok(Some(items))
            }
            Admission::Pending { fresh: false, items } => {
                info!(pending = items.len(), "resuming an event seen before");
                Ok(Some(items))
            }
        }
    }

    /// The plan once the event's digest positions are known.
    fn plan(&self, event: &Event, serving: &ServingSet, state: &MemoryState, positions: &[(DigestKey, u32)]) -> Plan {
        let mut state = state.clone();
        for (key, position) in positions {
            state.set_count(key.clone(), *position);
        }
        route(event, &serving.rules, &*self.directory.read(), &state)
    }

    /// Sends the deliveries admission claimed for this worker, then marks the event done.
    async fn dispatch_all(
        &self,
        serving: &ServingSet,
        event: &Event,
        items: Vec<OutboxItem>,
    ) -> Result<(), ProcessError> {
        // One session per event: what all recipients share is rendered once.
        let mut send = EventSend::new(event, &serving.rules, serving.templates.session(event));
        for item in &items {
            self.dispatcher.dispatch(&mut send, item).await?;
        }
        if !self.store.complete(event.id.as_str()).await? {
            // Another worker still sends some of it: come back and see it done.
            return Err(ProcessError::Busy(Duration::from_millis(500)));
        }
        Ok(())
    }

    fn log_plan(&self, plan: &Plan) {
        for d in &plan.deliveries {
            let outcome = match d.decision {
                Decision::Send => continue,
                Decision::Hold => "held",
                Decision::Suppress => "suppressed",
            };
            self.metrics
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
}

/// Debug builds only, for the tests of panic handling: with
/// `ROUTER_TEST_PANIC_AT=<event id>`, the first attempt at that event panics
/// once it is admitted, before anything is sent.
#[cfg(debug_assertions)]
fn injected_panic(event: &Event) {
    static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let chosen = std::env::var("ROUTER_TEST_PANIC_AT").is_ok_and(|id| id == event.id.as_str());
    if chosen && !FIRED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        panic!("injected for a test at event {}", event.id);
    }
}
