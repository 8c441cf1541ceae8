//! Render step, at load: the shape of what templates see, as one JSON Schema
//! document per way a template is used (the event's `data` schema from
//! [`EventType::data_schema`] plus the roots the renderer adds), and the
//! questions the checker asks of it: does a path exist, may it be empty.

use serde_json::{Map, Value, json};

use crate::event::{EventType, Party};
use crate::route::model::{find_property, resolve};

/// How a template is used: for one event type (and whether the rule fans out
/// over receivers, which adds `receiver`), or as a digest of held events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Usage {
    Event { ty: EventType, fan_out: bool },
    Digest { item: EventType },
}

impl Usage {
    pub(super) fn describe(&self) -> String {
        match self {
            Usage::Event { ty, fan_out: false } => format!("{ty} events"),
            Usage::Event { ty, fan_out: true } => format!("{ty} events (per receiver)"),
            Usage::Digest { item } => format!("a digest of {item} events"),
        }
    }
}

/// The recipient fields a template may print. `name`, `email` and
/// `preferences_url` (their link to stop this notification) differ per person
/// and are filled in after the per-event render (see `session.rs`), so they
/// may only be printed, never tested or passed to helpers.
pub const RECIPIENT_SLOTS: &[&str] = &["name", "email", "preferences_url"];

/// The shape of the render context for `usage`, as one JSON Schema document.
pub fn context_schema(usage: Usage) -> Value {
    let mut defs = Map::new();
    let mut take = |schema: schemars::Schema| {
        let mut value = schema.to_value();
        if let Some(Value::Object(d)) = value.as_object_mut().and_then(|o| o.remove("$defs")) {
            defs.extend(d);
        }
        value
    };
    let string = json!({"type": "string"});
    let recipient = json!({"type": "object", "properties": {
        "name": string, "email": string, "preferences_url": string, "time_zone": {"type": ["string", "null"]}}});
    let mut props = Map::new();
    props.insert("recipient".into(), recipient);
    props.insert("notification".into(), string.clone());
    props.insert("locale".into(), string.clone());
    let envelope = |data: Value| {
        json!({"type": "object", "properties": {
            "id": string, "type": string, "time": string, "source": string,
            "subject": {"type": ["string", "null"]}, "data": data}})
    };
    match usage {
        Usage::Event { ty, fan_out } => {
            let Value::Object(event) = envelope(take(ty.data_schema())) else {
                unreachable!("the envelope is an object")
            };
            if let Some(Value::Object(p)) = event.get("properties") {
                props.extend(p.clone());
            }
            if fan_out {
                props.insert("receiver".into(), take(schemars::schema_for!(Party)));
            }
        }
        Usage::Digest { item } => {
            let lead = envelope(take(item.data_schema()));
            props.insert("leads".into(), json!({"type": "array", "items": lead}));
            props.insert("count".into(), json!({"type": "integer"}));
            props.insert("partner".into(), take(schemars::schema_for!(Party)));
        }
    }
    json!({"$defs": defs, "type": "object", "properties": props})
}

/// The node a path leads to; `[]` (or a number) steps into an array's items.
pub(super) fn node_at<'s>(doc: &'s Value, segments: &[String]) -> Option<&'s Value> {
    let mut node = resolve(doc, doc);
    for segment in segments {
        node = if segment == "[]" || segment.parse::<usize>().is_ok() {
            items(doc, node)?
        } else {
            resolve(doc, find_property(doc, node, segment)?)
        };
    }
    Some(node)
}

pub(super) fn items<'s>(doc: &'s Value, node: &'s Value) -> Option<&'s Value> {
    if let Some(items) = node.get("items") {
        return Some(resolve(doc, items));
    }
    ["anyOf", "oneOf"].iter().find_map(|k| {
        node.get(*k)?
            .as_array()?
            .iter()
            .find_map(|b| items(doc, resolve(doc, b)))
    })
}

/// Whether the field at `segments` may be `null` (an optional field).
pub(super) fn is_nullable(doc: &Value, segments: &[String]) -> bool {
    let Some((last, parent)) = segments.split_last() else {
        return false;
    };
    if last == "[]" || last.parse::<usize>().is_ok() {
        return false;
    }
    node_at(doc, parent)
        .and_then(|p| find_property(doc, p, last))
        .is_some_and(|raw| accepts_null(doc, raw, 0))
}

fn accepts_null(doc: &Value, node: &Value, depth: usize) -> bool {
    let node = resolve(doc, node);
    let typed_null = match node.get("type") {
        Some(Value::String(t)) => t == "null",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "null"),
        _ => false,
    };
    typed_null
        || depth < 8
            && ["anyOf", "oneOf"].iter().any(|k| {
                node.get(*k)
                    .and_then(Value::as_array)
                    .is_some_and(|bs| bs.iter().any(|b| accepts_null(doc, b, depth + 1)))
            })
}
