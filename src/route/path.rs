//! Dotted paths into the routing context (`data.referral.origin`) and the
//! structured matchers a rule's `when` applies to them.

use serde::Deserialize;
use serde_json::Value;

/// Follows a dotted path through objects; `None` when any step is missing.
pub fn lookup<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(root, |node, segment| node.get(segment))
}

/// The value at `path`, treating JSON `null` as absent.
pub fn present<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    lookup(root, path).filter(|v| !v.is_null())
}

/// One test on the value at a path. Exactly one of the four forms is allowed.
#[derive(Clone, Debug, PartialEq)]
pub enum Matcher {
    Equals(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Exists(bool),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatcher {
    equals: Option<Value>,
    #[serde(rename = "in")]
    is_in: Option<Vec<Value>>,
    not_in: Option<Vec<Value>>,
    exists: Option<bool>,
}

impl TryFrom<RawMatcher> for Matcher {
    type Error = String;

    fn try_from(raw: RawMatcher) -> Result<Self, String> {
        let mut forms = Vec::new();
        if let Some(v) = raw.equals {
            forms.push(Matcher::Equals(v));
        }
        if let Some(v) = raw.is_in {
            if v.is_empty() {
                return Err("`in: []` can never match: list at least one value".into());
            }
            forms.push(Matcher::In(v));
        }
        if let Some(v) = raw.not_in {
            forms.push(Matcher::NotIn(v));
        }
        if let Some(v) = raw.exists {
            forms.push(Matcher::Exists(v));
        }
        match forms.len() {
            1 => Ok(forms.remove(0)),
            0 => Err("a matcher needs one of `equals`, `in`, `not_in` or `exists`".into()),
            _ => Err("a matcher takes exactly one of `equals`, `in`, `not_in` or `exists`".into()),
        }
    }
}

impl<'de> Deserialize<'de> for Matcher {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawMatcher::deserialize(d)?;
        Matcher::try_from(raw).map_err(serde::de::Error::custom)
    }
}

/// YAML scalars arrive as strings, numbers or booleans; compare them the way a
/// rule author reads them (`equals: 10` matches the JSON number 10).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl Matcher {
    /// Whether `actual` (the value at the path, `None` when absent) passes.
    pub fn test(&self, actual: Option<&Value>) -> bool {
        match self {
            Matcher::Equals(want) => actual.is_some_and(|v| same(v, want)),
            Matcher::In(set) => actual.is_some_and(|v| set.iter().any(|w| same(v, w))),
            Matcher::NotIn(set) => !actual.is_some_and(|v| set.iter().any(|w| same(v, w))),
            Matcher::Exists(want) => actual.is_some() == *want,
        }
    }

    /// How the matcher reads, for `explain`.
    pub fn describe(&self) -> String {
        let list = |vs: &[Value]| vs.iter().map(Value::to_string).collect::<Vec<_>>().join(", ");
        match self {
            Matcher::Equals(v) => format!("equals {v}"),
            Matcher::In(vs) => format!("in [{}]", list(vs)),
            Matcher::NotIn(vs) => format!("not in [{}]", list(vs)),
            Matcher::Exists(true) => "exists".into(),
            Matcher::Exists(false) => "is absent".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matchers() {
        let doc = json!({"a": {"b": "x", "n": 10, "z": null}});
        let at = |p| present(&doc, p);
        assert!(Matcher::Equals(json!("x")).test(at("a.b")));
        assert!(Matcher::Equals(json!(10.0)).test(at("a.n")));
        assert!(!Matcher::Equals(json!("x")).test(at("a.missing")));
        assert!(Matcher::In(vec![json!("y"), json!("x")]).test(at("a.b")));
        assert!(Matcher::NotIn(vec![json!("y")]).test(at("a.b")));
        assert!(Matcher::NotIn(vec![json!("y")]).test(at("a.z")));
        assert!(Matcher::Exists(false).test(at("a.z")));
        assert!(Matcher::Exists(true).test(at("a.b")));
    }
}
