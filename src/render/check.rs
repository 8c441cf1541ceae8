//! Render step, at load: every path a template names must exist in the event
//! model, including inside `#if`/`#each`/`#with` and partials, where
//! handlebars' strict mode does not look (handlebars-rust issue 579).
//!
//! The model is the JSON Schema of each event type's `data` (from
//! `EventType::data_schema`) plus the roots the renderer adds; a template is
//! checked against every event type whose rules use it. Errors carry the
//! template's `file:line:column`.

use std::collections::HashMap;
use std::path::Path;

use handlebars::template::{DecoratorTemplate, HelperTemplate, Parameter, Template, TemplateElement};
use serde_json::Value;

use super::helpers::{BLOCK_HELPERS, HELPERS};
pub use super::schema::{RECIPIENT_SLOTS, Usage, context_schema};
use super::schema::{is_nullable, items, node_at};
use super::source::{Kind, Source, TemplateError};

/// The partials one template can include: name -> (source, parsed as written).
pub type Partials<'a> = HashMap<String, (&'a Source, Template)>;

/// Checks one template for one usage; `doc` is [`context_schema`] of the usage.
pub fn check_template(
    source: &Source,
    template: &Template,
    partials: &Partials<'_>,
    usage: Usage,
    doc: &Value,
) -> Vec<TemplateError> {
    let mut walker = Walker {
        doc,
        partials,
        usage: usage.describe(),
        kind: source.kind,
        errors: Vec::new(),
        partial_blocks: Vec::new(),
        depth: 0,
    };
    walker.walk(template, &source.file, &Scope::default());
    walker
        .errors
        .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    walker.errors.dedup();
    walker.errors
}

/// Where paths resolve: the stack of contexts `#each`/`#with` opened (as
/// paths from the root), names bound by block params or partial hashes, and
/// the optional fields an enclosing `#if`/`#with` has proven present.
#[derive(Clone, Default)]
struct Scope {
    frames: Vec<Vec<String>>,
    locals: Vec<String>,
    guards: Vec<Vec<String>>,
    in_each: bool,
}

struct Walker<'a> {
    doc: &'a Value,
    partials: &'a Partials<'a>,
    usage: String,
    kind: Kind,
    errors: Vec<TemplateError>,
    /// The content of each `{{#> partial}}...{{/partial}}` being walked, with its scope.
    partial_blocks: Vec<(&'a Template, &'a Path, Scope)>,
    depth: usize,
}

#[derive(Clone, Copy)]
struct At<'f> {
    file: &'f Path,
    line: usize,
    column: usize,
}

impl<'a> Walker<'a> {
    fn error(&mut self, at: At<'_>, message: String) {
        self.errors.push(TemplateError {
            file: at.file.to_path_buf(),
            line: at.line,
            column: at.column,
            message,
        });
    }

    fn walk(&mut self, template: &'a Template, file: &'a Path, scope: &Scope) {
        self.depth += 1;
        if self.depth > 32 {
            self.error(
                At {
                    file,
                    line: 0,
                    column: 0,
                },
                "partials include each other too deeply".into(),
            );
            self.depth -= 1;
            return;
        }
        for (i, element) in template.elements.iter().enumerate() {
            let (line, column) = template.mapping.get(i).map_or((0, 0), |m| (m.0, m.1));
            let at = At { file, line, column };
            match element {
                TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
                TemplateElement::Expression(h) => self.expression(h, scope, at, false),
                TemplateElement::HtmlExpression(h) => self.expression(h, scope, at, true),
                TemplateElement::HelperBlock(h) => self.block(h, file, scope, at),
                TemplateElement::PartialExpression(d) => self.partial(d, false, file, scope, at),
                TemplateElement::PartialBlock(d) => self.partial(d, true, file, scope, at),
                TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => self.error(
                    at,
                    "decorators and inline partials are not supported; use a file in partials/".into(),
                ),
                #[allow(unreachable_patterns)]
                _ => self.error(at, "unsupported template construct".into()),
            }
        }
        self.depth -= 1;
    }

    /// `{{> name key=value}}`, and `{{#> name}}...{{/name}}` when `block`:
    /// the partial is walked with the hash keys bound, and `@partial-block`
    /// inside it walks the block's content in the includer's scope.
    fn partial(&mut self, d: &'a DecoratorTemplate, block: bool, file: &'a Path, scope: &Scope, at: At<'_>) {
        let name = match &d.name {
            Parameter::Name(n) => n.clone(),
            Parameter::Path(p) => p_raw(p).to_owned(),
            _ => {
                self.error(at, "a partial is named by a plain name".into());
                return;
            }
        };
        for value in d.hash.values() {
            self.value(value, scope, at);
        }
        if !d.params.is_empty() {
            self.error(
                at,
                format!("`{{{{> {name}}}}}` takes no context argument; pass key=value pairs"),
            );
        }
        let mut inner = scope.clone();
        inner.locals.extend(d.hash.keys().cloned());
        if name == "@partial-block" {
            match self.partial_blocks.pop() {
                Some((t, f, s)) => {
                    self.walk(t, f, &s);
                    self.partial_blocks.push((t, f, s));
                }
                None => self.error(at, "`@partial-block` used outside a partial block".into()),
            }
            return;
        }
        let Some((source, partial)) = self.partials.get(&name) else {
            let kind = if self.kind == Kind::Html { "html" } else { "txt" };
            self.error(
                at,
                format!("no partial `{name}` (partials/{name}.{kind}.hbs) for this locale"),
            );
            return;
        };
        if let (true, Some(content)) = (block, d.template.as_ref()) {
            self.partial_blocks.push((content, file, scope.clone()));
        }
        self.walk(partial, &source.file, &inner);
        if block && d.template.is_some() {
            self.partial_blocks.pop();
        }
    }

    /// `{{x}}`, `{{helper a b}}`, and `{{{x}}}` (raw) when `raw`.
    fn expression(&mut self, h: &HelperTemplate, scope: &Scope, at: At<'_>, raw: bool) {
        if raw && self.kind == Kind::Html {
            self.error(
                at,
                "`{{{ }}}` prints without HTML escaping; every event value must be escaped, use `{{ }}`".into(),
            );
        }
        let name = match &h.name {
            Parameter::Name(n) => Some(n.as_str()),
            _ => None,
        };
        match name {
            Some(n) if HELPERS.contains(&n) => {
                if h.params.is_empty() {
                    self.error(at, format!("helper `{n}` needs arguments"));
                }
                self.arguments(&h.params, &h.hash, scope, at);
            }
            _ if h.params.is_empty() && h.hash.is_empty() => match &h.name {
                Parameter::Name(n) => self.path(n, scope, at, true),
                Parameter::Path(p) => self.path(p_raw(p), scope, at, true),
                other => self.value(other, scope, at),
            },
            _ => self.error(
                at,
                format!(
                    "unknown helper `{}`; helpers: {}",
                    name.unwrap_or("?"),
                    HELPERS.join(", ")
                ),
            ),
        }
    }

    fn block(&mut self, h: &'a HelperTemplate, file: &'a Path, scope: &Scope, at: At<'_>) {
        let Parameter::Name(name) = &h.name else {
            self.error(at, "a block must name a helper".into());
            return;
        };
        if !BLOCK_HELPERS.contains(&name.as_str()) {
            self.error(
                at,
                format!("unknown block helper `{name}`; blocks: {}", BLOCK_HELPERS.join(", ")),
            );
            return;
        }
        if h.params.len() != 1 {
            self.error(at, format!("`#{name}` takes one argument"));
            return;
        }
        self.arguments(&h.params, &h.hash, scope, at);
        let target = match &h.params[0] {
            Parameter::Path(p) => self.resolve_path(p_raw(p), scope),
            Parameter::Name(n) => self.resolve_path(n, scope),
            _ => None,
        };
        let mut inner = scope.clone();
        let mut otherwise = scope.clone();
        if let Some(Target::Field(path)) = &target {
            match name.as_str() {
                "unless" => otherwise.guards.push(path.clone()),
                _ => inner.guards.push(path.clone()),
            }
        }
        if matches!(name.as_str(), "each" | "with") {
            match target {
                Some(Target::Field(mut path)) => {
                    if h.inverse.is_none() && is_nullable(self.doc, &path) && !scope.guards.contains(&path) {
                        self.error(
                            at,
                            format!(
                                "`{}` is optional, and `#{name}` fails when it is empty: add `{{{{else}}}}` \
                                 or wrap it in `{{{{#if {}}}}}`",
                                path.join("."),
                                path.join(".")
                            ),
                        );
                    }
                    if name == "each" {
                        if node_at(self.doc, &path).and_then(|n| items(self.doc, n)).is_none() {
                            self.error(at, format!("`#each` needs a list; `{}` is not one", path.join(".")));
                        }
                        path.push("[]".into());
                        inner.in_each = true;
                    }
                    inner.frames.push(path);
                }
                // Unknown or local targets were reported by `arguments`; walk on with a scope that accepts nothing.
                _ => inner.frames.push(vec!["\u{0}unknown".into()]),
            }
            if let Some(bp) = &h.block_param {
                inner.locals.extend(block_param_names(bp));
            }
        }
        if let Some(t) = &h.template {
            self.walk(t, file, &inner);
        }
        if let Some(t) = &h.inverse {
            self.walk(t, file, &otherwise);
        }
    }

    fn arguments(&mut self, params: &[Parameter], hash: &HashMap<String, Parameter>, scope: &Scope, at: At<'_>) {
        for p in params.iter().chain(hash.values()) {
            self.value(p, scope, at);
        }
    }

    /// A value passed to a helper or partial.
    fn value(&mut self, p: &Parameter, scope: &Scope, at: At<'_>) {
        match p {
            Parameter::Path(path) => self.path(p_raw(path), scope, at, false),
            Parameter::Name(n) => self.path(n, scope, at, false),
            Parameter::Literal(_) => {}
            Parameter::Subexpression(s) => {
                let name = s.name();
                if !HELPERS.contains(&name) {
                    self.error(at, format!("unknown helper `{name}` in `( )`"));
                }
                for p in s.params().into_iter().flatten() {
                    self.value(p, scope, at);
                }
                for p in s.hash().into_iter().flat_map(|h| h.values()) {
                    self.value(p, scope, at);
                }
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    /// Checks a path; `printed` is true when the template only prints it.
    fn path(&mut self, raw: &str, scope: &Scope, at: At<'_>, printed: bool) {
        match self.resolve_path(raw, scope) {
            None => self.error(at, format!("`{raw}` is not in the data of {}", self.usage)),
            Some(Target::Field(path)) => {
                let unguarded = (1..path.len())
                    .map(|i| &path[..i])
                    .find(|prefix| is_nullable(self.doc, prefix) && !scope.guards.iter().any(|g| g == prefix));
                if let Some(prefix) = unguarded {
                    let prefix = prefix.join(".");
                    self.error(
                        at,
                        format!(
                            "`{raw}` goes through `{prefix}`, which is optional: wrap it in `{{{{#if {prefix}}}}}`"
                        ),
                    );
                }
                let is_slot = path.len() == 2 && path[0] == "recipient" && RECIPIENT_SLOTS.contains(&path[1].as_str());
                if is_slot && !printed {
                    self.error(
                        at,
                        format!("`{raw}` differs per recipient: it can only be printed (`{{{{{raw}}}}}`)"),
                    );
                }
            }
            Some(Target::Local) => {}
        }
    }

    fn resolve_path(&self, raw: &str, scope: &Scope) -> Option<Target> {
        let mut rest = raw.trim();
        let mut frames = scope.frames.as_slice();
        if let Some(local) = rest.strip_prefix('@') {
            if let Some(from_root) = local.strip_prefix("root") {
                rest = from_root.trim_start_matches(['.', '/']);
                frames = &[];
            } else {
                let ok = matches!(local, "index" | "first" | "last" | "key") && scope.in_each;
                return ok.then_some(Target::Local);
            }
        }
        while let Some(up) = rest.strip_prefix("../") {
            rest = up;
            frames = frames.split_last().map_or(&[], |(_, f)| f);
        }
        for this in ["this.", "this/", "./"] {
            if let Some(r) = rest.strip_prefix(this) {
                rest = r;
            }
        }
        if rest == "this" || rest == "." || rest.is_empty() {
            return Some(Target::Field(frames.last().cloned().unwrap_or_default()));
        }
        let segments: Vec<String> = rest
            .split(['.', '/'])
            .map(|s| s.trim_start_matches('[').trim_end_matches(']').to_owned())
            .collect();
        if scope.locals.contains(&segments[0]) {
            return Some(Target::Local);
        }
        let mut full = frames.last().cloned().unwrap_or_default();
        full.extend(segments);
        node_at(self.doc, &full).map(|_| Target::Field(full))
    }
}

enum Target {
    /// A field of the context, as a path from the root.
    Field(Vec<String>),
    /// A block param, partial argument or `@index`-like variable.
    Local,
}

fn p_raw(p: &handlebars::Path) -> &str {
    match p {
        handlebars::Path::Relative((_, raw)) => raw,
        handlebars::Path::Local((_, _, raw)) => raw,
    }
}

fn block_param_names(bp: &handlebars::template::BlockParam) -> Vec<String> {
    let name = |p: &Parameter| match p {
        Parameter::Name(n) => Some(n.clone()),
        Parameter::Path(p) => Some(p_raw(p).to_owned()),
        _ => None,
    };
    match bp {
        handlebars::template::BlockParam::Single(a) => name(a).into_iter().collect(),
        handlebars::template::BlockParam::Pair((a, b)) => name(a).into_iter().chain(name(b)).collect(),
        #[allow(unreachable_patterns)]
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    fn source(text: &str, kind: Kind) -> Source {
        Source {
            file: "templates/t/en-US/body.html.hbs".into(),
            kind,
            text: text.into(),
            compiled: text.into(),
        }
    }

    fn check(text: &str, usage: Usage) -> Vec<String> {
        let s = source(text, Kind::Html);
        let partial = source("<p>{{label}} {{data.referral.name}}</p>", Kind::Html);
        let mut partials = Partials::new();
        partials.insert("card".into(), (&partial, Template::compile(&partial.text).unwrap()));
        let t = Template::compile(text).unwrap();
        check_template(&s, &t, &partials, usage, &context_schema(usage))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const SHARED: Usage = Usage::Event {
        ty: EventType::CosellShared,
        fan_out: true,
    };

    #[test]
    fn known_paths_pass_everywhere() {
        let errors = check(
            "{{data.referral.name}}\n{{#if data.referral.value}}{{money data.referral.value}}{{/if}}\n\
             {{#each data.referral.team}}{{name}} {{@index}} {{../data.referral.id}}{{/each}}\n\
             {{#with data.referral.customer}}{{name}}{{#if contact}}{{contact.email}}{{/if}}{{/with}}\n\
             {{receiver.name}} {{recipient.name}} {{datetime data.response_due}} {{> card label=\"x\"}}",
            SHARED,
        );
        assert_eq!(errors, Vec::<String>::new());
    }

    #[test]
    fn unknown_paths_inside_blocks_are_reported_with_their_line() {
        let errors = check(
            "<p>ok</p>\n{{#if data.referral.value}}\n  {{data.referral.valeu}}\n{{/if}}\n\
             {{#each data.referral.team}}{{nmae}}{{/each}}\n{{#with data.sender}}{{invited_by.emial}}{{/with}}",
            SHARED,
        );
        assert_eq!(
            errors,
            vec![
                "templates/t/en-US/body.html.hbs:3:3: `data.referral.valeu` is not in the data of \
                 cosell.opportunity.shared events (per receiver)",
                "templates/t/en-US/body.html.hbs:5:29: `nmae` is not in the data of cosell.opportunity.shared \
                 events (per receiver)",
                "templates/t/en-US/body.html.hbs:6:22: `invited_by.emial` is not in the data of \
                 cosell.opportunity.shared events (per receiver)",
            ]
        );
    }

    #[test]
    fn receiver_exists_only_for_fan_out_rules() {
        let errors = check(
            "{{receiver.name}}",
            Usage::Event {
                ty: EventType::CosellShared,
                fan_out: false,
            },
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn raw_html_unknown_helpers_and_tested_recipient_fields_are_refused() {
        let errors = check(
            "{{{data.referral.notes}}}\n{{shout data.referral.name}}\n{{#if recipient.name}}x{{/if}}",
            SHARED,
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains(":1:1: `{{{ }}}` prints without HTML escaping"));
        assert!(errors[1].contains(":2:1: unknown helper `shout`"));
        assert!(errors[2].contains(":3:1: `recipient.name` differs per recipient"));
    }

    #[test]
    fn optional_fields_must_be_guarded() {
        let errors = check(
            "{{data.referral.customer.contact.name}}\n{{#with data.referral.customer.contact}}{{name}}{{/with}}\n\
             {{#if data.referral.customer.contact}}{{data.referral.customer.contact.name}}{{/if}}\n\
             {{#with data.referral.customer.contact}}{{name}}{{else}}none{{/with}}",
            SHARED,
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains(":1:1: `data.referral.customer.contact.name` goes through"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains(":2:1: `data.referral.customer.contact` is optional"),
            "{errors:?}"
        );
    }

    #[test]
    fn digest_items_are_lead_events() {
        let usage = Usage::Digest {
            item: EventType::LeadCreated,
        };
        assert!(
            check(
                "{{#each leads}}{{data.lead.customer.company}}{{/each}} {{partner.name}}",
                usage
            )
            .is_empty()
        );
        assert_eq!(check("{{#each leads}}{{data.lead.company}}{{/each}}", usage).len(), 1);
        assert_eq!(check("{{data.lead.id}}", usage).len(), 1);
    }
}
