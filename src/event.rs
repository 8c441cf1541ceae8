//! The typed event model: what `decode` produces and everything downstream reads.
//!
//! Field names follow the upstream contract (the CloudEvents `data` of each event
//! type). Unknown fields are ignored; a missing required field is a decode error.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An email address, made only by parsing. Two addresses are equal when they
/// match ignoring ASCII case, because mail systems treat them as one mailbox.
#[derive(Clone, Debug, Eq, JsonSchema)]
#[schemars(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Checks the shape `local@domain`, with no whitespace or control characters
    /// (so an address can never smuggle a header line into a message).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (local, domain) = raw
            .rsplit_once('@')
            .ok_or_else(|| format!("`{raw}` is not an email address: no `@`"))?;
        if local.is_empty() || domain.is_empty() || !domain.contains('.') && domain != "localhost" {
            return Err(format!("`{raw}` is not an email address"));
        }
        if raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        {
            return Err(format!(
                "`{}` is not an email address: it holds whitespace or control characters",
                raw.escape_debug()
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lower-cased form, used as the key for de-duplication and look-ups.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl PartialEq for EmailAddress {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl std::hash::Hash for EmailAddress {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for b in self.0.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for EmailAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EmailAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(raw: impl Into<String>) -> Self {
                Self(raw.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                if raw.trim().is_empty() {
                    return Err(serde::de::Error::custom(concat!(stringify!($name), " must not be empty")));
                }
                Ok(Self(raw))
            }
        }
    };
}

id_newtype!(
    /// A CloudEvents `id`: unique per event, the idempotency key.
    EventId
);
id_newtype!(
    /// A partner organisation, e.g. `fabrikam`.
    PartnerId
);
id_newtype!(
    /// One location (MPN location id) of a partner.
    LocationId
);
id_newtype!(
    /// A portal user.
    UserId
);
id_newtype!(
    /// A referral (co-sell opportunity or deal).
    ReferralId
);

/// An IANA time zone name, checked when decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct TimeZone(String);

impl TimeZone {
    pub fn tz(&self) -> chrono_tz::Tz {
        self.0.parse().unwrap_or(chrono_tz::UTC)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse::<chrono_tz::Tz>()
            .map_err(|_| serde::de::Error::custom(format!("`{raw}` is not an IANA time zone")))?;
        Ok(Self(raw))
    }
}

/// A person named in an event (team member, inviter, submitter).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Person {
    #[serde(default)]
    pub user_id: Option<UserId>,
    pub name: String,
    pub email: EmailAddress,
    #[serde(default)]
    pub phone: Option<String>,
}

/// Who a party of a referral is: a partner, or Microsoft itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartyKind {
    Partner,
    Microsoft,
}

/// A sender, receiver or lead owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Party {
    pub kind: PartyKind,
    #[serde(default)]
    pub partner_id: Option<PartnerId>,
    pub name: String,
    #[serde(default)]
    pub location_id: Option<LocationId>,
    /// The sender's team member who created the referral (sender only).
    #[serde(default)]
    pub invited_by: Option<Person>,
    /// The receiver's contact for the referral (receiver only, once accepted).
    #[serde(default)]
    pub contact: Option<Person>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerContact {
    pub name: String,
    pub email: EmailAddress,
    #[serde(default)]
    pub phone: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Customer {
    pub name: String,
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub contact: Option<CustomerContact>,
}

/// An amount of money in one currency (ISO 4217 code).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Money {
    pub amount: f64,
    pub currency: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SolutionRef {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub publisher: Option<String>,
}

/// The referral as carried by co-sell and deal-registration events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Referral {
    pub id: ReferralId,
    pub name: String,
    pub deal_type: String,
    /// How the referral was created: `partner_center`, `new_deal`, `bulk_upload`, `connector`, ...
    pub origin: String,
    pub status: String,
    pub customer: Customer,
    #[serde(default)]
    pub value: Option<Money>,
    #[serde(default)]
    pub close_date: Option<NaiveDate>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub team: Vec<Person>,
    #[serde(default)]
    pub created_by: Option<Person>,
    #[serde(default)]
    pub solutions: Vec<SolutionRef>,
}

/// `cosell.opportunity.shared`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CosellShared {
    pub referral: Referral,
    pub sender: Party,
    pub receivers: Vec<Party>,
    /// The cut-off date: the referral auto-declines for a receiver who has not answered.
    pub response_due: DateTime<Utc>,
}

/// `cosell.opportunity.accepted` and `cosell.opportunity.expired`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CosellAnswer {
    pub referral: Referral,
    pub sender: Party,
    pub receiver: Party,
}

/// `cosell.opportunity.declined`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CosellDeclined {
    pub referral: Referral,
    pub sender: Party,
    pub receiver: Party,
    pub reason: String,
    #[serde(default)]
    pub notes: Option<String>,
}

/// `cosell.opportunity.expiring`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CosellExpiring {
    pub referral: Referral,
    pub sender: Party,
    pub receiver: Party,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RegistrationActionRequired {
    pub id: String,
    /// What the validation team asks the partner to change.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RegistrationReviewFailed {
    pub id: String,
    pub reason: String,
    #[serde(default)]
    pub can_request_review: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RegistrationRef {
    pub id: String,
}

/// `dealreg.action_required`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DealregActionRequired {
    pub referral: Referral,
    pub registration: RegistrationActionRequired,
}

/// `dealreg.review_failed`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DealregReviewFailed {
    pub referral: Referral,
    pub registration: RegistrationReviewFailed,
}

/// `dealreg.review_selected`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DealregReviewSelected {
    pub referral: Referral,
    pub registration: RegistrationRef,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Solution {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub offer_id: Option<String>,
    #[serde(default)]
    pub target_status: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ValidationReport {
    pub url: String,
    #[serde(default)]
    pub findings: Vec<String>,
}

/// `cosell.solution.validation_failed`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SolutionValidationFailed {
    pub partner: Party,
    pub solution: Solution,
    pub submitted_by: Person,
    pub report: ValidationReport,
}

/// `cosell.solution.validation_passed`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SolutionValidationPassed {
    pub partner: Party,
    pub solution: Solution,
    pub submitted_by: Person,
    pub achieved_status: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Offer {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LeadCustomer {
    pub company: String,
    pub name: String,
    pub email: EmailAddress,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
}

/// A marketplace lead: an offer lead (with a call to action) or a profile lead (RFI).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Lead {
    pub id: String,
    /// `offer` or `profile`.
    pub kind: String,
    /// For offer leads: `contact_me`, `free_trial`, `get_it_now`, `test_drive`, ...
    #[serde(default)]
    pub call_to_action: Option<String>,
    pub source: String,
    #[serde(default)]
    pub offer: Option<Offer>,
    pub customer: LeadCustomer,
    #[serde(default)]
    pub quality: Option<String>,
    #[serde(default)]
    pub email_validity: Option<String>,
    #[serde(default)]
    pub phone_validity: Option<String>,
    #[serde(default)]
    pub wants_contact: bool,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

/// `lead.created`, `lead.declined`, `lead.expired`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LeadEvent {
    pub lead: Lead,
    pub partner: Party,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `directory.partner.upserted`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PartnerUpserted {
    pub partner_id: PartnerId,
    pub name: String,
    #[serde(default)]
    pub time_zone: Option<TimeZone>,
    #[serde(default)]
    pub locale: Option<String>,
}

/// A role a user holds, for one location or (with no location) for the whole partner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    ReferralAdmin,
    ReferralUser,
    CosellSolutionAdmin,
    BusinessProfileAdmin,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RoleGrant {
    pub role: Role,
    /// `null` means the role holds for every location of the partner.
    #[serde(default)]
    pub location_id: Option<LocationId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DirectoryUser {
    pub user_id: UserId,
    pub name: String,
    pub email: EmailAddress,
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default)]
    pub time_zone: Option<TimeZone>,
}

/// `directory.user.upserted`: the user's full set of roles (replaces the previous set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserUpserted {
    pub partner_id: PartnerId,
    pub user: DirectoryUser,
    pub roles: Vec<RoleGrant>,
}

/// `directory.user.removed`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserRemoved {
    pub partner_id: PartnerId,
    pub user_id: UserId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProfileContact {
    pub name: String,
    pub email: EmailAddress,
    #[serde(default)]
    pub locale: Option<String>,
}

/// `directory.profile.contact_set`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProfileContactSet {
    pub partner_id: PartnerId,
    pub location_id: LocationId,
    pub contact: ProfileContact,
}

macro_rules! event_types {
    ($($variant:ident($data:ty) = $name:literal,)*) => {
        /// Every event type the router understands.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        pub enum EventType {
            $(#[serde(rename = $name)] $variant,)*
        }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $name,)* }
            }

            pub fn parse(raw: &str) -> Option<Self> {
                match raw { $($name => Some(EventType::$variant),)* _ => None }
            }

            /// The JSON Schema of this type's `data`, used to check the paths
            /// that rules and templates name.
            pub fn data_schema(self) -> schemars::Schema {
                match self { $(EventType::$variant => schemars::schema_for!($data),)* }
            }
        }

        /// The typed `data` of an event.
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum EventData {
            $($variant($data),)*
        }

        impl EventData {
            pub fn event_type(&self) -> EventType {
                match self { $(EventData::$variant(_) => EventType::$variant,)* }
            }

            pub(crate) fn from_value(
                ty: EventType,
                value: serde_json::Value,
            ) -> Result<Self, serde_path_to_error::Error<serde_json::Error>> {
                match ty {
                    $(EventType::$variant => serde_path_to_error::deserialize(value).map(EventData::$variant),)*
                }
            }
        }
    };
}

event_types! {
    CosellShared(CosellShared) = "cosell.opportunity.shared",
    CosellAccepted(CosellAnswer) = "cosell.opportunity.accepted",
    CosellDeclined(CosellDeclined) = "cosell.opportunity.declined",
    CosellExpiring(CosellExpiring) = "cosell.opportunity.expiring",
    CosellExpired(CosellAnswer) = "cosell.opportunity.expired",
    DealregActionRequired(DealregActionRequired) = "dealreg.action_required",
    DealregReviewFailed(DealregReviewFailed) = "dealreg.review_failed",
    DealregReviewSelected(DealregReviewSelected) = "dealreg.review_selected",
    SolutionValidationFailed(SolutionValidationFailed) = "cosell.solution.validation_failed",
    SolutionValidationPassed(SolutionValidationPassed) = "cosell.solution.validation_passed",
    LeadCreated(LeadEvent) = "lead.created",
    LeadDeclined(LeadEvent) = "lead.declined",
    LeadExpired(LeadEvent) = "lead.expired",
    PartnerUpserted(PartnerUpserted) = "directory.partner.upserted",
    UserUpserted(UserUpserted) = "directory.user.upserted",
    UserRemoved(UserRemoved) = "directory.user.removed",
    ProfileContactSet(ProfileContactSet) = "directory.profile.contact_set",
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decoded CloudEvent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub id: EventId,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub time: DateTime<Utc>,
    pub subject: Option<String>,
    pub data: EventData,
}

/// What a `directory.*` event changes in the directory.
#[derive(Clone, Copy, Debug)]
pub enum DirectoryChange<'a> {
    PartnerUpserted(&'a PartnerUpserted),
    UserUpserted(&'a UserUpserted),
    UserRemoved(&'a UserRemoved),
    ProfileContactSet(&'a ProfileContactSet),
}

impl Event {
    /// The directory change this event carries; `None` for every other event.
    pub fn directory_change(&self) -> Option<DirectoryChange<'_>> {
        match &self.data {
            EventData::PartnerUpserted(p) => Some(DirectoryChange::PartnerUpserted(p)),
            EventData::UserUpserted(u) => Some(DirectoryChange::UserUpserted(u)),
            EventData::UserRemoved(u) => Some(DirectoryChange::UserRemoved(u)),
            EventData::ProfileContactSet(c) => Some(DirectoryChange::ProfileContactSet(c)),
            EventData::CosellShared(_)
            | EventData::CosellAccepted(_)
            | EventData::CosellDeclined(_)
            | EventData::CosellExpiring(_)
            | EventData::CosellExpired(_)
            | EventData::DealregActionRequired(_)
            | EventData::DealregReviewFailed(_)
            | EventData::DealregReviewSelected(_)
            | EventData::SolutionValidationFailed(_)
            | EventData::SolutionValidationPassed(_)
            | EventData::LeadCreated(_)
            | EventData::LeadDeclined(_)
            | EventData::LeadExpired(_) => None,
        }
    }

    /// The referral this event is about, when it is about one.
    pub fn referral(&self) -> Option<&Referral> {
        match &self.data {
            EventData::CosellShared(d) => Some(&d.referral),
            EventData::CosellAccepted(d) | EventData::CosellExpired(d) => Some(&d.referral),
            EventData::CosellDeclined(d) => Some(&d.referral),
            EventData::CosellExpiring(d) => Some(&d.referral),
            EventData::DealregActionRequired(d) => Some(&d.referral),
            EventData::DealregReviewFailed(d) => Some(&d.referral),
            EventData::DealregReviewSelected(d) => Some(&d.referral),
            EventData::SolutionValidationFailed(_)
            | EventData::SolutionValidationPassed(_)
            | EventData::LeadCreated(_)
            | EventData::LeadDeclined(_)
            | EventData::LeadExpired(_)
            | EventData::PartnerUpserted(_)
            | EventData::UserUpserted(_)
            | EventData::UserRemoved(_)
            | EventData::ProfileContactSet(_) => None,
        }
    }

    /// The receivers a rule may fan out over: every receiver of a `shared`
    /// event, or the one receiver of an answer event.
    pub fn receivers(&self) -> &[Party] {
        match &self.data {
            EventData::CosellShared(d) => &d.receivers,
            EventData::CosellAccepted(d) | EventData::CosellExpired(d) => std::slice::from_ref(&d.receiver),
            EventData::CosellDeclined(d) => std::slice::from_ref(&d.receiver),
            EventData::CosellExpiring(d) => std::slice::from_ref(&d.receiver),
            EventData::DealregActionRequired(_)
            | EventData::DealregReviewFailed(_)
            | EventData::DealregReviewSelected(_)
            | EventData::SolutionValidationFailed(_)
            | EventData::SolutionValidationPassed(_)
            | EventData::LeadCreated(_)
            | EventData::LeadDeclined(_)
            | EventData::LeadExpired(_)
            | EventData::PartnerUpserted(_)
            | EventData::UserUpserted(_)
            | EventData::UserRemoved(_)
            | EventData::ProfileContactSet(_) => &[],
        }
    }
}
