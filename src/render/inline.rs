//! Render step, at load: splice partials into the templates that include them.
//!
//! handlebars-rust gives every partial call its own copy of the current
//! context (a deep clone of the whole event, even without arguments), and a
//! message includes about ten partials per part. That clone was where most of
//! the render time went. A partial called without arguments renders exactly
//! its own elements in the caller's context, so its compiled elements are
//! spliced in place once, at load (`{{> @partial-block}}` becomes the caller's
//! block). Whitespace was already settled when each file was compiled, so the
//! output is byte for byte what the engine would have produced. Partials
//! called with arguments are left to the engine.

use handlebars::Handlebars;
use handlebars::template::{Parameter, Template, TemplateElement, TemplateMapping};

const PARTIAL_BLOCK: &str = "@partial-block";

/// Replaces the template `name` in `registry` by its expansion.
pub fn inline_partials(registry: &mut Handlebars<'static>, name: &str) {
    let Some(template) = registry.get_template(name) else {
        return;
    };
    let expanded = expand(template, registry, None, 0);
    registry.register_template(name, expanded);
}

fn partial_name(p: &Parameter) -> Option<&str> {
    match p {
        Parameter::Name(n) => Some(n),
        Parameter::Path(handlebars::Path::Relative((_, raw))) => Some(raw),
        _ => None,
    }
}

fn expand(template: &Template, registry: &Handlebars<'static>, block: Option<&Template>, depth: usize) -> Template {
    let mut out = template.clone();
    out.elements.clear();
    out.mapping.clear();
    for (i, element) in template.elements.iter().enumerate() {
        let at = template.mapping.get(i).cloned();
        match element {
            TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d)
                if d.hash.is_empty() && d.params.is_empty() && depth < 16 =>
            {
                match partial_name(&d.name) {
                    Some(PARTIAL_BLOCK) if block.is_some() => {
                        splice(&mut out, block.expect("checked"));
                        continue;
                    }
                    Some(name) if name != PARTIAL_BLOCK => {
                        if let Some(partial) = registry.get_template(name) {
                            let content = d.template.as_ref().map(|c| expand(c, registry, block, depth + 1));
                            let expanded = expand(partial, registry, content.as_ref(), depth + 1);
                            splice(&mut out, &expanded);
                            continue;
                        }
                    }
                    _ => {}
                }
                push(&mut out, element.clone(), at);
            }
            TemplateElement::HelperBlock(h) => {
                let mut h = h.clone();
                h.template = h.template.map(|t| expand(&t, registry, block, depth + 1));
                h.inverse = h.inverse.map(|t| expand(&t, registry, block, depth + 1));
                push(&mut out, TemplateElement::HelperBlock(h), at);
            }
            other => push(&mut out, other.clone(), at),
        }
    }
    out
}

/// Elements and their source positions stay parallel (render errors use them).
fn push(out: &mut Template, element: TemplateElement, at: Option<TemplateMapping>) {
    out.elements.push(element);
    if let Some(at) = at.or_else(|| out.mapping.last().cloned()) {
        out.mapping.push(at);
    }
}

fn splice(out: &mut Template, from: &Template) {
    for (i, element) in from.elements.iter().enumerate() {
        push(out, element.clone(), from.mapping.get(i).cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spliced_partials_render_the_same() {
        let mut plain = Handlebars::new();
        plain.set_prevent_indent(true);
        plain
            .register_template_string("layout", "<main>\n{{> @partial-block}}\n</main>\n")
            .unwrap();
        plain
            .register_template_string("card", "{{#if a}}\n<p>{{a}}</p>\n{{/if}}\n")
            .unwrap();
        plain
            .register_template_string(
                "t",
                "{{#> layout}}\n  {{> card}}\n{{#each xs}}{{> card}}{{/each}}\n{{/layout}}\n",
            )
            .unwrap();
        let data = json!({"a": "x", "xs": [{"a": 1}, {"a": null}]});
        let before = plain.render("t", &data).unwrap();
        let mut spliced = plain.clone();
        inline_partials(&mut spliced, "t");
        assert_eq!(spliced.render("t", &data).unwrap(), before);
        let elements = &spliced.get_template("t").unwrap().elements;
        assert!(!elements.iter().any(|e| matches!(e, TemplateElement::PartialBlock(_))));
    }
}
