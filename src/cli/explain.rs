//! `explain`: the plan for one event and, for every rule, why it did or did
//! not act. The JSON form is for tools; the text form for people.

use serde_json::{Value, json};

use crate::event::Event;
use crate::route::{Plan, RuleSet};

/// The plan as one JSON object with a `deliveries` array.
pub fn to_json(event: &Event, rules: &RuleSet, plan: &Plan) -> Value {
    let deliveries: Vec<Value> = plan
        .deliveries
        .iter()
        .map(|d| {
            json!({
                "notification": d.notification,
                "template": d.template,
                "channel": d.channel.to_string(),
                "recipient": d.recipient.email.as_str(),
                "recipient_name": d.recipient.name,
                "locale": d.recipient.locale,
                "decision": d.decision,
                "rules": d.rules,
                "digest": d.digest,
            })
        })
        .collect();
    json!({
        "event": {"id": event.id, "type": event.event_type.as_str()},
        "rule_set": rules.hash,
        "deliveries": deliveries,
        "records": plan.records,
        "counters": plan.counters,
        "rules": rule_lines(event, rules, plan),
    })
}

fn rule_lines(event: &Event, rules: &RuleSet, plan: &Plan) -> Vec<Value> {
    let mut out = Vec::new();
    for rule in &rules.rules {
        let traces: Vec<_> = plan.trace.iter().filter(|t| t.rule == rule.id).collect();
        if traces.is_empty() {
            let reason = if rule.on.contains(&event.event_type) {
                "no receiver to fan out over".to_string()
            } else {
                format!("not for {}", event.event_type)
            };
            out.push(json!({"rule": rule.id, "matched": false, "reason": reason}));
        }
        for t in traces {
            out.push(json!({"rule": rule.id, "scope": t.scope, "matched": t.matched, "reason": t.reason}));
        }
    }
    out
}

/// The plan as text.
pub fn to_text(event: &Event, rules: &RuleSet, plan: &Plan) -> String {
    let mut s = format!("event {} ({})\n\ndeliveries:\n", event.id, event.event_type);
    if plan.deliveries.is_empty() {
        s.push_str("  (none)\n");
    }
    for d in &plan.deliveries {
        let decision = match d.decision {
            crate::route::Decision::Send => "send",
            crate::route::Decision::Hold => "hold",
            crate::route::Decision::Suppress => "suppress",
        };
        s.push_str(&format!(
            "  {decision:<8} {:<40} {:<13} {:<32} by {}\n",
            d.notification,
            d.channel.to_string(),
            d.recipient.email.as_str(),
            d.rules.join(", ")
        ));
    }
    if !plan.records.is_empty() {
        s.push_str("\nrecords:\n");
        for r in &plan.records {
            let whom = r
                .receiver
                .as_deref()
                .map(|p| format!(" for receiver {p}"))
                .unwrap_or_default();
            s.push_str(&format!(
                "  referral {}{whom} is {} (by {})\n",
                r.referral, r.status, r.rule
            ));
        }
    }
    s.push_str("\nrules:\n");
    for line in rule_lines(event, rules, plan) {
        let mark = if line["matched"] == Value::Bool(true) { "+" } else { "-" };
        let scope = line["scope"].as_str().map(|s| format!(" [{s}]")).unwrap_or_default();
        s.push_str(&format!(
            "  {mark} {}{scope}: {}\n",
            line["rule"].as_str().unwrap_or_default(),
            line["reason"].as_str().unwrap_or_default()
        ));
    }
    s
}
