//! Bytes in, a typed [`Event`] out: the one place events are decoded, from a
//! broker message (the size limit, structured and binary CloudEvents) or from
//! the files the CLI reads. A failure here is permanent: the same bytes will
//! never decode, so the worker dead-letters them with the reason.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Deserialize;
use serde_json::Value;

use crate::directory::Directory;
use crate::event::{Event, EventData, EventId, EventType};

/// Why a message is not a usable event. The text names the offending field.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("message of {size} bytes is over the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a CloudEvent: {0}")]
    NotCloudEvent(String),
    #[error("unsupported CloudEvents specversion `{0}` (expected 1.0)")]
    SpecVersion(String),
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("bad `data` of {event_type}: {path}: {message}")]
    BadData {
        event_type: EventType,
        path: String,
        message: String,
    },
}

impl DecodeError {
    /// A short machine-readable reason, for the dead-letter header and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotCloudEvent(_) | DecodeError::SpecVersion(_) => "not_cloudevent",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::BadData { .. } => "bad_data",
        }
    }
}

/// The CloudEvents context attributes, from a structured body or from headers.
#[derive(Debug, Deserialize)]
pub struct Attributes {
    pub specversion: String,
    pub id: EventId,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: DateTime<Utc>,
    #[serde(default)]
    pub subject: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Structured {
    #[serde(flatten)]
    attributes: Attributes,
    data: Value,
}

/// Decodes a structured-mode CloudEvent (the whole event is the JSON body).
pub fn decode_structured(bytes: &[u8]) -> Result<Event, DecodeError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(DecodeError::NotCloudEvent("the body is not a JSON object".into()));
    }
    let structured: Structured =
        serde_path_to_error::deserialize(value).map_err(|e| DecodeError::NotCloudEvent(describe(&e)))?;
    decode_data(structured.attributes, structured.data)
}

/// Decodes a binary-mode CloudEvent: attributes came from `cloudEvents:*`
/// headers, the body is the `data`.
pub fn decode_binary(attributes: Attributes, body: &[u8]) -> Result<Event, DecodeError> {
    let data: Value = serde_json::from_slice(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    decode_data(attributes, data)
}

fn decode_data(attributes: Attributes, data: Value) -> Result<Event, DecodeError> {
    if attributes.specversion != "1.0" {
        return Err(DecodeError::SpecVersion(attributes.specversion));
    }
    let event_type = EventType::parse(&attributes.event_type)
        .ok_or_else(|| DecodeError::UnknownType(attributes.event_type.clone()))?;
    let data = EventData::from_value(event_type, data).map_err(|e| DecodeError::BadData {
        event_type,
        path: data_path(&e),
        message: e.inner().to_string(),
    })?;
    Ok(Event {
        id: attributes.id,
        source: attributes.source,
        event_type,
        time: attributes.time,
        subject: attributes.subject,
        data,
    })
}

fn data_path(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    if path == "." {
        "data".into()
    } else {
        format!("data.{path}")
    }
}

fn describe(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    if path == "." {
        e.inner().to_string()
    } else {
        format!("{path}: {}", e.inner())
    }
}

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

/// Decodes a broker message of at most `max` bytes in either CloudEvents
/// mode: binary when the `cloudEvents:*` headers carry the attributes,
/// structured otherwise.
pub fn decode_message(properties: &BasicProperties, body: &[u8], max: usize) -> Result<Event, DecodeError> {
    if body.len() > max {
        return Err(DecodeError::TooLarge { size: body.len(), max });
    }
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

/// The event id a message carries, as far as it can be read: for naming a
/// message that does not decode (the `cloudEvents:id` header, else the body's
/// `id`; a body over `max` bytes is not read).
pub fn event_id_of(properties: &BasicProperties, body: &[u8], max: usize) -> Option<String> {
    let from_header = properties.headers().as_ref().and_then(|h| header_text(h, "id"));
    from_header
        .or_else(|| {
            if body.len() > max {
                return None;
            }
            serde_json::from_slice::<Value>(body)
                .ok()?
                .get("id")?
                .as_str()
                .map(str::to_string)
        })
        .filter(|id| !id.trim().is_empty() && id.len() <= 256)
}

/// Why a file of events cannot be used; the text starts with the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{}: {source}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    BadEvent {
        path: PathBuf,
        /// The line, in a file of one event per line.
        line: Option<usize>,
        #[source]
        source: DecodeError,
    },
    #[error("{}: event {id} is a {event_type}, not a directory event", path.display())]
    NotDirectory {
        path: PathBuf,
        id: EventId,
        event_type: EventType,
    },
}

fn unreadable(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    |source| FileError::Unreadable {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a file of events, one CloudEvent per line (blank lines and `#` comments skipped).
pub fn read_jsonl(path: &Path) -> Result<Vec<Event>, FileError> {
    let text = std::fs::read_to_string(path).map_err(unreadable(path))?;
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let event = decode_structured(line.as_bytes()).map_err(|source| FileError::BadEvent {
            path: path.to_path_buf(),
            line: Some(i + 1),
            source,
        })?;
        events.push(event);
    }
    Ok(events)
}

/// Reads one event file (a single structured CloudEvent).
pub fn read_event(path: &Path) -> Result<Event, FileError> {
    let bytes = std::fs::read(path).map_err(unreadable(path))?;
    decode_structured(&bytes).map_err(|source| FileError::BadEvent {
        path: path.to_path_buf(),
        line: None,
        source,
    })
}

/// Reads a directory file and builds the directory from it.
pub fn read_directory(path: &Path) -> Result<Directory, FileError> {
    let events = read_jsonl(path)?;
    if let Some(other) = events.iter().find(|e| e.directory_change().is_none()) {
        return Err(FileError::NotDirectory {
            path: path.to_path_buf(),
            id: other.id.clone(),
            event_type: other.event_type,
        });
    }
    Ok(Directory::from_events(&events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EmailAddress;

    const SHARED: &str = include_str!("../rules/tests/events/cosell.opportunity.shared.json");

    fn with(mut v: Value, f: impl FnOnce(&mut Value)) -> Vec<u8> {
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    fn shared() -> Value {
        serde_json::from_str(SHARED).unwrap()
    }

    #[test]
    fn decodes_the_example() {
        let event = decode_structured(SHARED.as_bytes()).unwrap();
        assert_eq!(event.event_type, EventType::CosellShared);
        assert_eq!(event.id.as_str(), "evt-1001");
        let EventData::CosellShared(d) = &event.data else {
            panic!("wrong variant")
        };
        assert_eq!(d.receivers.len(), 2);
        assert_eq!(
            d.sender.invited_by.as_ref().unwrap().email.as_str(),
            "amy@fabrikam.example"
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let bytes = with(shared(), |v| {
            v["extension"] = "x".into();
            v["data"]["referral"]["brand_new"] = serde_json::json!({"a": 1});
        });
        assert!(decode_structured(&bytes).is_ok());
    }

    #[test]
    fn a_missing_field_is_named() {
        let bytes = with(shared(), |v| {
            v["data"]["referral"]["customer"]
                .as_object_mut()
                .unwrap()
                .remove("name");
        });
        let err = decode_structured(&bytes).unwrap_err();
        assert_eq!(err.kind(), "bad_data");
        let text = err.to_string();
        assert!(text.contains("data.referral.customer"), "{text}");
        assert!(text.contains("missing field `name`"), "{text}");
    }

    #[test]
    fn a_wrong_type_is_named() {
        let bytes = with(shared(), |v| v["data"]["referral"]["value"]["amount"] = "lots".into());
        let text = decode_structured(&bytes).unwrap_err().to_string();
        assert!(text.contains("data.referral.value.amount"), "{text}");
        assert!(text.contains("invalid type"), "{text}");
    }

    #[test]
    fn a_bad_email_is_named() {
        let bytes = with(shared(), |v| {
            v["data"]["sender"]["invited_by"]["email"] = "amy\r\nBcc: x@y.z".into()
        });
        let text = decode_structured(&bytes).unwrap_err().to_string();
        assert!(text.contains("data.sender.invited_by.email"), "{text}");
    }

    #[test]
    fn envelope_errors() {
        assert_eq!(decode_structured(b"{not json").unwrap_err().kind(), "not_json");
        assert_eq!(decode_structured(b"[1,2]").unwrap_err().kind(), "not_cloudevent");
        let no_id = with(shared(), |v| {
            v.as_object_mut().unwrap().remove("id");
        });
        let err = decode_structured(&no_id).unwrap_err();
        assert!(err.to_string().contains("missing field `id`"), "{err}");
        let unknown = with(shared(), |v| v["type"] = "cosell.opportunity.teleported".into());
        assert_eq!(
            decode_structured(&unknown).unwrap_err(),
            DecodeError::UnknownType("cosell.opportunity.teleported".into())
        );
        let v2 = with(shared(), |v| v["specversion"] = "0.3".into());
        assert_eq!(decode_structured(&v2).unwrap_err().kind(), "not_cloudevent");
    }

    #[test]
    fn every_example_decodes() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/tests/events");
        let mut seen = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let event = decode_structured(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen.insert(event.event_type);
        }
        assert_eq!(seen.len(), EventType::ALL.len(), "an example for every event type");
    }

    #[test]
    fn deeply_nested_json_is_refused_not_a_crash() {
        let depth = 100_000;
        let bomb = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(decode_structured(bomb.as_bytes()).unwrap_err().kind(), "not_json");
        let nested_data = with(shared(), |v| {
            let mut deep = serde_json::json!(1);
            for _ in 0..100 {
                deep = serde_json::json!({ "x": deep });
            }
            v["data"]["referral"]["brand_new"] = deep;
        });
        assert!(
            decode_structured(&nested_data).is_ok(),
            "deep unknown fields are still ignored"
        );
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let mut bytes = SHARED.as_bytes().to_vec();
        let at = SHARED.find("Contoso Ltd").unwrap();
        bytes[at] = 0xff;
        bytes[at + 1] = 0xfe;
        let err = decode_structured(&bytes).unwrap_err();
        assert_eq!(err.kind(), "not_json");
        assert!(err.to_string().contains("invalid unicode"), "{err}");
    }

    #[test]
    fn markup_in_strings_is_kept_as_text() {
        let bytes = with(shared(), |v| {
            v["data"]["referral"]["notes"] = "<script>alert(1)</script>".into()
        });
        let event = decode_structured(&bytes).unwrap();
        assert_eq!(
            event.referral().unwrap().notes.as_deref(),
            Some("<script>alert(1)</script>"),
            "decoding keeps text as it came; rendering escapes it"
        );
    }

    #[test]
    fn header_breaking_addresses_are_refused_everywhere() {
        for bad in [
            "a@b.example\r\nBcc: x@y.example",
            "a b@c.example",
            "<a@b.example>",
            "a@",
            "@b.example",
            "plain",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            EmailAddress::parse(" Amy@Fabrikam.example ").unwrap().as_str(),
            "Amy@Fabrikam.example"
        );
    }
}
