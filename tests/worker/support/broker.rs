//! A real AMQP client for tests: publish events, read the dead-letter queue,
//! remove the test's broker objects afterwards.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// This test's broker objects, all uniquely named.
pub struct Broker {
    pub exchange: String,
    pub queue: String,
    pub dlx: String,
    pub action_center: String,
    url: String,
    conn: Connection,
    channel: Channel,
}

/// A dead-lettered message: the reason header and the body.
pub struct Dead {
    pub reason: String,
    pub error: String,
    pub body: Vec<u8>,
}

impl Broker {
    pub async fn new(name: &str) -> Self {
        Self::new_at(name, URL).await
    }

    /// The same on the broker at `url`.
    pub async fn new_at(name: &str, url: &str) -> Self {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RabbitMQ is not reachable at {url} ({e}). These tests need a local broker: \
                     start it with `rabbitmq-server -detached` (user guest/guest)."
                )
            });
        let channel = conn.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let base = super::unique(name);
        Self {
            exchange: format!("{base}.events"),
            queue: format!("{base}.queue"),
            dlx: format!("{base}.dlx"),
            action_center: format!("{base}.ac"),
            url: url.to_string(),
            conn,
            channel,
        }
    }

    /// A new connection (after the broker closed the old one).
    pub async fn reconnect(&mut self) {
        self.conn = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .unwrap();
        self.channel = self.conn.create_channel().await.unwrap();
        self.channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
    }

    async fn publish_with(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props.with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Publishes a structured CloudEvent, routed by its `type`.
    pub async fn publish(&self, body: &[u8]) {
        let key = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "cosell.opportunity.shared".into());
        self.publish_raw(&key, body).await;
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let props = BasicProperties::default().with_content_type("application/cloudevents+json".into());
        self.publish_with(routing_key, body, props).await;
    }

    /// Publishes in binary mode: attributes in `cloudEvents:*` headers, `data` as the body.
    pub async fn publish_binary(&self, structured: &[u8]) {
        let v: serde_json::Value = serde_json::from_slice(structured).unwrap();
        let mut headers = FieldTable::default();
        for attr in ["specversion", "id", "source", "type", "time", "subject"] {
            if let Some(s) = v[attr].as_str() {
                headers.insert(format!("cloudEvents:{attr}").into(), AMQPValue::LongString(s.into()));
            }
        }
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers);
        let body = serde_json::to_vec(&v["data"]).unwrap();
        self.publish_with(v["type"].as_str().unwrap(), &body, props).await;
    }

    /// Waits (bounded) for `n` messages in the dead-letter queue and takes them.
    pub async fn dead_letters(&self, n: usize, timeout: Duration) -> Vec<Dead> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let dlq = format!("{}.dead", self.queue);
        while out.len() < n && Instant::now() < deadline {
            match self
                .channel
                .basic_get(dlq.as_str().into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                Some(msg) => {
                    let headers = msg.delivery.properties.headers().clone().unwrap_or_default();
                    let text = |k: &str| match headers.inner().get(k) {
                        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        _ => String::new(),
                    };
                    out.push(Dead {
                        reason: text("x-router-reason"),
                        error: text("x-router-error"),
                        body: msg.delivery.data.clone(),
                    });
                    msg.delivery.ack(BasicAckOptions::default()).await.unwrap();
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        out
    }

    /// Binds a fresh probe queue to `exchange` (all keys), to see what the worker publishes there.
    pub async fn probe(&self, exchange: &str) -> String {
        let name = format!("{}.probe", self.queue);
        self.channel
            .queue_declare(
                name.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                name.as_str().into(),
                exchange.into(),
                "#".into(),
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        name
    }

    /// Takes what arrived in a probe queue within `timeout`, up to `n` messages.
    pub async fn take(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            match self
                .channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                Some(msg) => {
                    out.push(msg.delivery.data.clone());
                    msg.delivery.ack(BasicAckOptions::default()).await.unwrap();
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        out
    }

    /// Whether the worker's queue exists: only the worker declares it, after
    /// the exchanges, so a worker that answers as ready and whose queue is
    /// missing is some other process on the port.
    pub async fn declared(&self) -> bool {
        // A passive declare of a missing queue closes its channel: use one of its own.
        let Ok(channel) = self.conn.create_channel().await else {
            return false;
        };
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let found = channel
            .queue_declare(self.queue.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok();
        let _ = channel.close(200, "checked".into()).await;
        found
    }

    /// Removes this test's queues and exchanges.
    pub async fn cleanup(self) {
        for q in [
            format!("{}.dead", self.queue),
            self.queue.clone(),
            format!("{}.probe", self.queue),
        ] {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in [&self.exchange, &self.dlx, &self.action_center] {
            let _ = self
                .channel
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.conn.close(200, "done".into()).await;
    }
}
