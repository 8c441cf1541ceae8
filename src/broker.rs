//! The broker side of consuming and publishing: the connection, the topology
//! the worker declares at every (re)connect, and a confirmed publisher that
//! survives reconnects.

use std::sync::{Arc, RwLock};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};

use crate::config::Amqp;
use crate::event::EventType;

/// Connects, naming the connection so operators can find it in the management UI.
/// Over `amqps://` the broker's certificate is checked against the system's
/// trust store and `amqp.tls_ca_file`, and `amqp.tls_cert_file` is presented
/// when set.
pub async fn connect(amqp: &Amqp) -> Result<Connection, ConnectError> {
    let props = ConnectionProperties::default().with_connection_name(format!("referral-router {}", amqp.queue).into());
    let url = amqp.url.expose();
    if !url.starts_with("amqps://") {
        return Ok(Connection::connect(url, props).await?);
    }
    let tls = tls_config(amqp)?;
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connect_with_config(url, props, tls, runtime)
        .await
        .map_err(|e| {
            ConnectError::Tls(format!(
                "broker {} over TLS (trusted: {}): {e}",
                amqp.redacted_url(),
                crate::config::trust("amqp.tls_ca_file", &amqp.tls_ca_file)
            ))
        })
}

/// Why the broker could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    /// Over `amqps://`: the handshake, or the broker behind it; the text names the server and the trust.
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Files(String),
}

fn tls_config(amqp: &Amqp) -> Result<lapin::tcp::OwnedTLSConfig, ConnectError> {
    let read = |key: &str, path: &str| {
        std::fs::read(path).map_err(|e| ConnectError::Files(format!("{key}: cannot read `{path}`: {e}")))
    };
    let cert_chain = match amqp.tls_ca_file.as_str() {
        "" => None,
        path => Some(
            String::from_utf8(read("amqp.tls_ca_file", path)?)
                .map_err(|_| ConnectError::Files(format!("amqp.tls_ca_file: `{path}` is not PEM text")))?,
        ),
    };
    let identity = match (amqp.tls_cert_file.as_str(), amqp.tls_key_file.as_str()) {
        ("", _) | (_, "") => None,
        (cert, key) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
            pem: read("amqp.tls_cert_file", cert)?,
            key: read("amqp.tls_key_file", key)?,
        }),
    };
    Ok(lapin::tcp::OwnedTLSConfig { identity, cert_chain })
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// The routing-key patterns the worker's queue is bound with: one per event
/// family (`cosell.#`, `dealreg.#`, `lead.#`, `directory.#`). Binding the
/// families rather than each type means a type upstream adds before the router
/// knows it lands in the dead-letter queue with `unknown_type`, visibly,
/// instead of being dropped by the exchange.
pub fn binding_keys() -> Vec<String> {
    let mut keys: Vec<String> = EventType::ALL
        .iter()
        .map(|t| format!("{}.#", t.as_str().split('.').next().unwrap_or_default()))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Declares everything the worker needs; safe to repeat (declarations are idempotent).
pub async fn declare_topology(channel: &Channel, amqp: &Amqp) -> lapin::Result<()> {
    // Durable topic exchange: events survive a broker restart, routed by type.
    channel
        .exchange_declare(
            amqp.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    // Direct dead-letter exchange, routed by queue name, so several workers'
    // queues can share it and each keeps its own dead-letter queue.
    channel
        .exchange_declare(
            amqp.dead_letter_exchange.as_str().into(),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    let dlq = amqp.dead_letter_queue();
    channel
        .queue_declare(dlq.as_str().into(), durable_queue(), quorum(FieldTable::default()))
        .await?;
    channel
        .queue_bind(
            dlq.as_str().into(),
            amqp.dead_letter_exchange.as_str().into(),
            amqp.queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // The work queue: a quorum queue (replicated, survives node loss) with an
    // explicit delivery limit, because RabbitMQ 3.10 has no default and a
    // message that crashes the worker would otherwise come back forever. Past
    // the limit the broker dead-letters it to the same place the worker does.
    let mut args = FieldTable::default();
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(i32::try_from(amqp.delivery_limit).unwrap_or(i32::MAX)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(amqp.dead_letter_exchange.as_str().into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(amqp.queue.as_str().into()),
    );
    channel
        .queue_declare(amqp.queue.as_str().into(), durable_queue(), quorum(args))
        .await?;
    for key in binding_keys() {
        channel
            .queue_bind(
                amqp.queue.as_str().into(),
                amqp.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    // Where Action Center entries go for the portal; the portal binds its own queue.
    channel
        .exchange_declare(
            amqp.action_center_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

fn durable_queue() -> lapin::options::QueueDeclareOptions {
    lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn quorum(mut args: FieldTable) -> FieldTable {
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("the broker refused a message for {exchange}")]
    Refused { exchange: String },
}

/// Publishes with publisher confirms on the current connection's channel; the
/// supervisor swaps the channel in after each reconnect.
#[derive(Clone, Default)]
pub struct Publisher {
    channel: Arc<RwLock<Option<Channel>>>,
}

impl Publisher {
    /// Opens a confirm-mode channel on `conn` and makes it current.
    pub async fn attach(&self, conn: &Connection) -> lapin::Result<()> {
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        *self.channel.write().unwrap_or_else(|e| e.into_inner()) = Some(channel);
        Ok(())
    }

    pub fn detach(&self) {
        *self.channel.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn connected(&self) -> bool {
        self.channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|c| c.status().connected())
    }

    /// Publishes persistently and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let channel = self
            .channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(PublishError::NotConnected)?;
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                payload,
                properties.with_delivery_mode(2),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => Err(PublishError::Refused {
                exchange: exchange.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn binds_every_family() {
        assert_eq!(
            super::binding_keys(),
            ["cosell.#", "dealreg.#", "directory.#", "lead.#"]
        );
    }
}
