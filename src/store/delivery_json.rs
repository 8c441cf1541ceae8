//! A planned delivery as stored in the notification log, so a redelivered
//! event dispatches exactly what was planned the first time.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{EmailAddress, PartnerId, UserId};
use crate::route::rules::Channel;
use crate::route::{Decision, Delivery, DigestKey, HeldFor, Recipient};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredDelivery {
    notification: String,
    template: String,
    channel: Channel,
    decision: String,
    rules: Vec<String>,
    email: EmailAddress,
    name: String,
    user_id: Option<UserId>,
    partner_id: Option<PartnerId>,
    locale: Option<String>,
    time_zone: Option<String>,
    receiver: Option<Value>,
    digest: Option<(String, PartnerId, NaiveDate)>,
    /// Absent in deliveries stored before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held_for: Option<HeldFor>,
}

impl From<&Delivery> for StoredDelivery {
    fn from(d: &Delivery) -> Self {
        Self {
            notification: d.notification.clone(),
            template: d.template.clone(),
            channel: d.channel,
            decision: match d.decision {
                Decision::Send => "send",
                Decision::Hold => "hold",
                Decision::Suppress => "suppress",
            }
            .into(),
            rules: d.rules.clone(),
            email: d.recipient.email.clone(),
            name: d.recipient.name.clone(),
            user_id: d.recipient.user_id.clone(),
            partner_id: d.recipient.partner_id.clone(),
            locale: d.recipient.locale.clone(),
            time_zone: d.recipient.time_zone.clone(),
            receiver: d.receiver.clone(),
            digest: d.digest.as_ref().map(|k| (k.counter.clone(), k.partner.clone(), k.day)),
            held_for: d.held_for.clone(),
        }
    }
}

impl From<StoredDelivery> for Delivery {
    fn from(s: StoredDelivery) -> Self {
        Delivery {
            notification: s.notification,
            template: s.template,
            channel: s.channel,
            recipient: Recipient {
                email: s.email,
                name: s.name,
                user_id: s.user_id,
                partner_id: s.partner_id,
                locale: s.locale,
                time_zone: s.time_zone,
            },
            decision: match s.decision.as_str() {
                "hold" => Decision::Hold,
                "suppress" => Decision::Suppress,
                _ => Decision::Send,
            },
            rules: s.rules,
            receiver: s.receiver,
            digest: s
                .digest
                .map(|(counter, partner, day)| DigestKey { counter, partner, day }),
            held_for: s.held_for,
        }
    }
}

impl StoredDelivery {
    /// Reads a delivery from its notification-log JSON.
    pub fn parse(raw: &str) -> Result<Delivery, crate::store::StoreError> {
        serde_json::from_str::<StoredDelivery>(raw)
            .map(Delivery::from)
            .map_err(|e| crate::store::StoreError::Unreadable(format!("a stored delivery is unreadable: {e}")))
    }
}
