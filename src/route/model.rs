//! Which paths exist in the event model, so rules (and templates) that name a
//! field the events do not have are rejected when checked, not at send time.

use std::collections::HashMap;
use std::sync::OnceLock;

use schemars::Schema;
use serde_json::Value;

use crate::event::{EventType, Party};

/// The roots a path may start with, besides `data`.
const ENVELOPE: &[&str] = &["id", "type", "time", "source", "subject"];
/// State the router keeps, readable by rules.
const STATE: &[&str] = &["state.receiver.status", "state.referral.status"];

/// The schema of each event type's `data`, generated once.
pub fn data_schema(ty: EventType) -> &'static Schema {
    static SCHEMAS: OnceLock<HashMap<EventType, Schema>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| EventType::ALL.iter().map(|t| (*t, t.data_schema())).collect());
    &schemas[&ty]
}

fn party_schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| schemars::schema_for!(Party))
}

/// Event types that carry a receiver, alone or as a list to fan out over.
pub fn has_receiver(ty: EventType) -> bool {
    let schema = data_schema(ty);
    schema_has_path(schema, &["receiver"]) || schema_has_path(schema, &["receivers"])
}

/// Whether `path` can be present in events of type `ty`.
pub fn path_exists(ty: EventType, path: &str) -> bool {
    let segments: Vec<&str> = path.split('.').collect();
    match segments.as_slice() {
        [one] if ENVELOPE.contains(one) => true,
        ["data", rest @ ..] => schema_has_path(data_schema(ty), rest),
        ["receiver", rest @ ..] => has_receiver(ty) && schema_has_path(party_schema(), rest),
        ["state", ..] => STATE.contains(&path) && (path != "state.receiver.status" || has_receiver(ty)),
        _ => false,
    }
}

/// Walks a JSON Schema through `properties`, following `$ref`s and the
/// branches of `anyOf`/`oneOf`/`allOf` (how optional and enum fields appear).
pub fn schema_has_path(schema: &Schema, segments: &[&str]) -> bool {
    let root = schema.as_value();
    node_has_path(root, root, segments, 0)
}

fn node_has_path(root: &Value, node: &Value, segments: &[&str], depth: usize) -> bool {
    if depth > 64 {
        return false;
    }
    let node = resolve(root, node);
    let Some((first, rest)) = segments.split_first() else {
        return true;
    };
    if let Some(child) = node.get("properties").and_then(|p| p.get(*first))
        && node_has_path(root, child, rest, depth + 1)
    {
        return true;
    }
    ["anyOf", "oneOf", "allOf"].iter().any(|key| {
        node.get(*key)
            .and_then(Value::as_array)
            .is_some_and(|branches| branches.iter().any(|b| node_has_path(root, b, segments, depth + 1)))
    })
}

/// The item schema of an array at `segments`, for paths that iterate (`#each`).
pub fn array_items<'s>(schema: &'s Schema, segments: &[&str]) -> Option<&'s Value> {
    let root = schema.as_value();
    let mut node = resolve(root, root);
    for segment in segments {
        node = resolve(root, find_property(root, node, segment)?);
    }
    let items = node.get("items").or_else(|| {
        ["anyOf", "oneOf"].iter().find_map(|k| {
            node.get(*k)?
                .as_array()?
                .iter()
                .find_map(|b| resolve(root, b).get("items"))
        })
    })?;
    Some(resolve(root, items))
}

pub(crate) fn find_property<'s>(root: &'s Value, node: &'s Value, name: &str) -> Option<&'s Value> {
    if let Some(child) = node.get("properties").and_then(|p| p.get(name)) {
        return Some(child);
    }
    ["anyOf", "oneOf", "allOf"].iter().find_map(|k| {
        node.get(*k)?
            .as_array()?
            .iter()
            .find_map(|b| find_property(root, resolve(root, b), name))
    })
}

pub(crate) fn resolve<'s>(root: &'s Value, node: &'s Value) -> &'s Value {
    let mut node = node;
    for _ in 0..16 {
        let Some(reference) = node.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let Some(target) = reference.strip_prefix('#').and_then(|p| root.pointer(p)) else {
            break;
        };
        node = target;
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_paths() {
        let shared = EventType::CosellShared;
        assert!(path_exists(shared, "data.referral.origin"));
        assert!(path_exists(shared, "data.sender.invited_by.email"));
        assert!(path_exists(shared, "receiver.kind"));
        assert!(path_exists(shared, "state.referral.status"));
        assert!(!path_exists(shared, "data.referral.origins"));
        assert!(!path_exists(shared, "data.lead.kind"));
        assert!(path_exists(EventType::LeadCreated, "data.lead.call_to_action"));
        assert!(!path_exists(EventType::LeadCreated, "receiver.kind"));
        assert!(!path_exists(EventType::LeadCreated, "state.receiver.status"));
        assert!(path_exists(EventType::CosellExpiring, "state.receiver.status"));
    }

    #[test]
    fn array_items_of_team() {
        let schema = EventType::CosellAccepted.data_schema();
        let items = array_items(&schema, &["referral", "team"]).unwrap();
        assert!(items.get("properties").unwrap().get("email").is_some());
    }
}
