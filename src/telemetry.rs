//! Telemetry: structured logs (text or JSON) and the Prometheus metrics the
//! flow updates at each step.

use std::io::{IsTerminal, Write};

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::config::{Log, LogFormat};

/// Starts logging to stderr; `RUST_LOG` wins over `log.level` when set.
/// Colours only when stderr is a terminal. A log line that cannot be
/// written (stderr closed, a full pipe whose reader left) is dropped: logging
/// never stops or fails the work it describes.
pub fn init_logs(log: &Log) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .with_writer(|| Lossy(std::io::stderr()));
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A writer whose failures are swallowed.
struct Lossy<W>(W);

impl<W: Write> Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(self.0.write(buf).unwrap_or(buf.len()))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

fn latency(registry: &Registry) -> Histogram {
    let latency = Histogram::with_opts(
        HistogramOpts::new(
            "router_processing_seconds",
            "Time from receiving a message to settling it.",
        )
        .buckets(vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ]),
    )
    .expect("valid metric");
    registry.register(Box::new(latency.clone())).expect("unique metric");
    latency
}

fn rules_info(registry: &Registry) -> IntGaugeVec {
    let rules = IntGaugeVec::new(
        Opts::new("router_rules_info", "The active rule set: 1 for its hash."),
        &["hash"],
    )
    .expect("valid metric");
    registry.register(Box::new(rules.clone())).expect("unique metric");
    rules
}

fn connected(registry: &Registry) -> IntGauge {
    let gauge = IntGauge::new("router_broker_connected", "1 while consuming from the broker.").expect("valid metric");
    registry.register(Box::new(gauge.clone())).expect("unique metric");
    gauge
}

/// Every metric the worker exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub consumed: IntCounter,
    pub redelivered: IntCounter,
    pub routed: IntCounterVec,
    pub duplicates: IntCounter,
    pub deliveries: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub retries: IntCounter,
    pub settled: IntCounterVec,
    pub latency: Histogram,
    pub rules: IntGaugeVec,
    pub broker_connected: IntGauge,
    pub digests: IntCounterVec,
    pub panics: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let consumed = counter("router_messages_consumed_total", "Messages received from the broker.");
        let redelivered = counter(
            "router_messages_redelivered_total",
            "Messages the broker flagged as redelivered.",
        );
        let routed = counter_vec("router_events_routed_total", "Events routed, by type.", &["type"]);
        let duplicates = counter(
            "router_events_duplicate_total",
            "Events already fully processed (same id): acked, nothing sent.",
        );
        let deliveries = counter_vec(
            "router_deliveries_total",
            "Planned deliveries by channel and outcome (sent, held, suppressed, failed).",
            &["channel", "outcome"],
        );
        let dead_lettered = counter_vec(
            "router_dead_lettered_total",
            "Messages sent to the dead-letter queue, by reason.",
            &["reason"],
        );
        let digests = counter_vec(
            "router_digests_total",
            "Digest emails by outcome: sent, failed (retried at a later flush), or refused (for good).",
            &["outcome"],
        );
        let retries = counter("router_retries_total", "Transient failures retried after a backoff.");
        let settled = counter_vec(
            "router_messages_settled_total",
            "Messages finished with the broker: ack, dead_letter or requeue.",
            &["outcome"],
        );
        let panics = counter(
            "router_panics_total",
            "Panics caught while processing a message (each retried like an outage).",
        );
        let (latency, rules, broker_connected) = (latency(&registry), rules_info(&registry), connected(&registry));
        Self {
            registry,
            consumed,
            redelivered,
            routed,
            duplicates,
            deliveries,
            dead_lettered,
            retries,
            settled,
            latency,
            rules,
            broker_connected,
            digests,
            panics,
        }
    }

    /// Marks `hash` as the serving rule set.
    pub fn set_rules(&self, hash: &str) {
        self.rules.reset();
        self.rules.with_label_values(&[hash]).set(1);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
