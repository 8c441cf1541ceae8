//! Render step, at load: read the `templates/` folder into sources, and inline
//! `email.css` into every HTML file once, so rendering never touches CSS.
//!
//! Layout of the folder (see `templates/README.md`):
//!
//! ```text
//! email.css                              inlined into every *.html.hbs at load
//! partials/NAME.{html,txt}.hbs           shared by every locale
//! partials/LOCALE/NAME.{html,txt}.hbs    one locale's partials (override shared ones)
//! NOTIFICATION/action_center_link.hbs    the Action Center deep link (any locale)
//! NOTIFICATION/LOCALE/subject.hbs, body.html.hbs, body.txt.hbs,
//!                     action_center_title.hbs, action_center_body.hbs
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem with the templates, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub file: PathBuf,
    /// 0 when the problem is the file as a whole.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl TemplateError {
    pub(crate) fn file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file.display(), self.message),
            _ => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            ),
        }
    }
}

/// Whether a file renders HTML (escaped) or plain text (subjects, text bodies, Action Center).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Html,
    Text,
}

impl Kind {
    /// The middle of a partial's file name: `NAME.html.hbs`, `NAME.txt.hbs`.
    pub fn extension(self) -> &'static str {
        match self {
            Kind::Html => "html",
            Kind::Text => "txt",
        }
    }
}

/// A template file: where it is, what the author wrote, and what is registered.
#[derive(Clone, Debug)]
pub struct Source {
    pub file: PathBuf,
    pub kind: Kind,
    /// As written; checks run on this so line numbers are the author's.
    pub text: String,
    /// What the engine renders: for HTML, the text with the CSS inlined.
    pub compiled: String,
}

/// The parts of one notification in one locale.
pub const EMAIL_PARTS: &[(&str, Kind)] = &[
    ("subject", Kind::Text),
    ("body.html", Kind::Html),
    ("body.txt", Kind::Text),
];
pub const ACTION_CENTER_PARTS: &[(&str, Kind)] =
    &[("action_center_title", Kind::Text), ("action_center_body", Kind::Text)];
pub const LINK_PART: &str = "action_center_link";

/// Everything read from the folder, before compiling.
#[derive(Debug, Default)]
pub struct Tree {
    pub shared_partials: BTreeMap<(String, Kind), Source>,
    pub locale_partials: BTreeMap<String, BTreeMap<(String, Kind), Source>>,
    /// notification -> locale -> part name (`subject`, `body.html`, ...) -> source.
    pub notifications: BTreeMap<String, BTreeMap<String, BTreeMap<String, Source>>>,
    /// notification -> its Action Center link template.
    pub links: BTreeMap<String, Source>,
}

/// A locale folder name: `en-US`, `de-DE`.
pub fn is_locale(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 5
        && b[2] == b'-'
        && b[..2].iter().all(u8::is_ascii_lowercase)
        && b[3..].iter().all(u8::is_ascii_uppercase)
}

/// The notification folders in `dir` (cheap: no parsing), for `rules check`.
pub fn notification_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = subdirs(dir)
        .into_iter()
        .filter(|(name, _)| name != "partials")
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names
}

fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    out.sort();
    out
}

fn files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    out.sort();
    out
}

/// Reads the folder. Every problem is collected; the tree is only returned whole.
pub fn read_tree(dir: &Path) -> Result<Tree, Vec<TemplateError>> {
    let mut reader = TreeReader::new(dir);
    let partials_dir = dir.join("partials");
    let mut tree = Tree {
        shared_partials: reader.partials(&partials_dir),
        locale_partials: reader.locale_partials(&partials_dir),
        ..Tree::default()
    };
    for (name, path) in subdirs(dir) {
        if name == "partials" {
            continue;
        }
        if let Some(link) = reader.link(&path) {
            tree.links.insert(name.clone(), link);
        }
        tree.notifications.insert(name, reader.locales(&path));
    }
    reader.finish(tree)
}

/// A part the fallback locale has and another locale's variant lacks: not an
/// error (the variant may not need it), but the recipients of that locale
/// will read another locale's text there.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// The file that would close it.
    pub file: PathBuf,
    pub locale: String,
    /// What is used instead: the shared partial, or nothing.
    pub instead: &'static str,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: warning: {DEFAULT} has this part and {} does not ({})",
            self.file.display(),
            self.locale,
            self.instead,
            DEFAULT = crate::render::DEFAULT_LOCALE,
        )
    }
}

/// Every part an `en-US` variant has that another locale's variant of the
/// same notification (or the locale's partials folder) lacks.
pub fn gaps(dir: &Path, tree: &Tree) -> Vec<Gap> {
    let fallback = crate::render::DEFAULT_LOCALE;
    let mut out = Vec::new();
    for (name, locales) in &tree.notifications {
        let Some(base) = locales.get(fallback) else { continue };
        for (locale, parts) in locales.iter().filter(|(l, _)| *l != fallback) {
            for part in base.keys().filter(|p| !parts.contains_key(*p)) {
                out.push(Gap {
                    file: dir.join(name).join(locale).join(format!("{part}.hbs")),
                    locale: locale.clone(),
                    instead: "nothing: the part is left out",
                });
            }
        }
    }
    let Some(base) = tree.locale_partials.get(fallback) else {
        return out;
    };
    for (locale, partials) in tree.locale_partials.iter().filter(|(l, _)| *l != fallback) {
        for (name, kind) in base.keys().filter(|k| !partials.contains_key(*k)) {
            let shared = tree.shared_partials.contains_key(&(name.clone(), *kind));
            out.push(Gap {
                file: dir
                    .join("partials")
                    .join(locale)
                    .join(format!("{name}.{}.hbs", kind.extension())),
                locale: locale.clone(),
                instead: if shared {
                    "the shared partial is used"
                } else {
                    "templates that include it fail to load"
                },
            });
        }
    }
    out
}

/// The template folder being read: the stylesheet HTML files are inlined
/// with, and the problems found so far. Files that cannot be read or
/// inlined are reported first, then files and folders in the wrong place.
struct TreeReader {
    css: String,
    /// The stylesheet, then files that cannot be read or inlined.
    unreadable: Vec<TemplateError>,
    /// Files and folders that do not belong where they are.
    misplaced: Vec<TemplateError>,
}

impl TreeReader {
    /// Starts with the stylesheet, `email.css`.
    fn new(dir: &Path) -> Self {
        let mut unreadable = Vec::new();
        let css_file = dir.join("email.css");
        let css = std::fs::read_to_string(&css_file).unwrap_or_else(|e| {
            unreadable.push(TemplateError::file(
                &css_file,
                format!("cannot read the stylesheet: {e}"),
            ));
            String::new()
        });
        Self {
            css,
            unreadable,
            misplaced: Vec::new(),
        }
    }

    /// One template file, with the stylesheet inlined into HTML.
    fn read(&mut self, path: &Path, kind: Kind) -> Option<Source> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.unreadable
                    .push(TemplateError::file(path, format!("cannot read: {e}")));
                return None;
            }
        };
        let compiled = match kind {
            Kind::Text => text.clone(),
            Kind::Html => match inline_css(&text, &self.css) {
                Ok(html) => html,
                Err(message) => {
                    self.unreadable.push(TemplateError::file(path, message));
                    return None;
                }
            },
        };
        Some(Source {
            file: path.to_path_buf(),
            kind,
            text,
            compiled,
        })
    }

    /// The partials directly in `folder`: `NAME.html.hbs` and `NAME.txt.hbs`.
    fn partials(&mut self, folder: &Path) -> BTreeMap<(String, Kind), Source> {
        let mut out = BTreeMap::new();
        for (name, path) in files(folder) {
            let parsed = name
                .strip_suffix(".html.hbs")
                .map(|n| (n, Kind::Html))
                .or_else(|| name.strip_suffix(".txt.hbs").map(|n| (n, Kind::Text)));
            match parsed {
                Some((stem, kind)) => {
                    if let Some(source) = self.read(&path, kind) {
                        out.insert((stem.to_owned(), kind), source);
                    }
                }
                None => self.misplaced.push(TemplateError::file(
                    &path,
                    "a partial is named NAME.html.hbs or NAME.txt.hbs",
                )),
            }
        }
        out
    }

    /// Each locale's partials, from the locale folders in `partials/`.
    fn locale_partials(&mut self, partials_dir: &Path) -> BTreeMap<String, BTreeMap<(String, Kind), Source>> {
        let mut out = BTreeMap::new();
        for (locale, path) in subdirs(partials_dir) {
            if !is_locale(&locale) {
                self.misplaced.push(TemplateError::file(
                    &path,
                    "partial folders are named after a locale, e.g. de-DE",
                ));
                continue;
            }
            let parts = self.partials(&path);
            out.insert(locale, parts);
        }
        out
    }

    /// A notification's Action Center link, the only file its folder holds
    /// beside the locale folders.
    fn link(&mut self, folder: &Path) -> Option<Source> {
        let mut link = None;
        for (file, file_path) in files(folder) {
            if file == format!("{LINK_PART}.hbs") {
                link = self.read(&file_path, Kind::Text);
            } else {
                self.misplaced.push(TemplateError::file(
                    &file_path,
                    format!("unexpected file: a notification folder holds locale folders and {LINK_PART}.hbs"),
                ));
            }
        }
        link
    }

    /// A notification's locale folders: locale -> part name -> source.
    fn locales(&mut self, folder: &Path) -> BTreeMap<String, BTreeMap<String, Source>> {
        let mut locales = BTreeMap::new();
        for (locale, locale_path) in subdirs(folder) {
            if !is_locale(&locale) {
                self.misplaced.push(TemplateError::file(
                    &locale_path,
                    "expected a locale folder, e.g. en-US",
                ));
                continue;
            }
            let parts = self.parts(&locale_path);
            locales.insert(locale, parts);
        }
        locales
    }

    /// The email and Action Center parts of one notification in one locale.
    fn parts(&mut self, folder: &Path) -> BTreeMap<String, Source> {
        let mut parts = BTreeMap::new();
        for (file, file_path) in files(folder) {
            let known = EMAIL_PARTS
                .iter()
                .chain(ACTION_CENTER_PARTS)
                .find(|(part, _)| file == format!("{part}.hbs"));
            match known {
                Some((part, kind)) => {
                    if let Some(s) = self.read(&file_path, *kind) {
                        parts.insert((*part).to_owned(), s);
                    }
                }
                None => self.misplaced.push(TemplateError::file(
                    &file_path,
                    "unexpected file: expected subject.hbs, body.html.hbs, body.txt.hbs, \
                     action_center_title.hbs or action_center_body.hbs",
                )),
            }
        }
        parts
    }

    /// The tree, when nothing was wrong; every problem otherwise.
    fn finish(self, tree: Tree) -> Result<Tree, Vec<TemplateError>> {
        let mut errors = self.unreadable;
        errors.extend(self.misplaced);
        if errors.is_empty() { Ok(tree) } else { Err(errors) }
    }
}

/// Inlines `css` into an HTML template. Handlebars expressions are swapped for
/// placeholders the HTML parser leaves where they are (comments between
/// elements, so a `{{#each}}` between table rows is not moved out of the
/// table), then swapped back. A full document (the layout) keeps its `<head>`.
pub fn inline_css(template: &str, css: &str) -> Result<String, String> {
    let (protected, originals) = protect(template)?;
    let lower = template.trim_start().get(..14).unwrap_or_default().to_ascii_lowercase();
    let inlined = if lower.starts_with("<!doctype") || lower.starts_with("<html") {
        css_inline::CSSInliner::options()
            .load_remote_stylesheets(false)
            .extra_css(Some(css.into()))
            .build()
            .inline(&protected)
    } else {
        css_inline::CSSInliner::options()
            .load_remote_stylesheets(false)
            .build()
            .inline_fragment(&protected, css)
    }
    .map_err(|e| format!("cannot inline email.css: {e}"))?;
    restore(&inlined, &originals)
}

const ATTR_OPEN: char = '\u{E000}';
const ATTR_CLOSE: char = '\u{E001}';

#[derive(Clone, Copy, PartialEq)]
enum HtmlState {
    Text,
    Tag,
    Attr(u8),
    Comment,
}

/// Replaces every `{{...}}` with a placeholder; returns the originals in order.
fn protect(src: &str) -> Result<(String, Vec<String>), String> {
    let bytes = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut originals = Vec::new();
    let mut state = HtmlState::Text;
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"{{") && (i == 0 || bytes[i - 1] != b'\\') {
            let end = mustache_end(src, i)?;
            out.push_str(&src[copied..i]);
            let n = originals.len();
            match state {
                HtmlState::Text => out.push_str(&format!("<!--hbs:{n}-->")),
                HtmlState::Attr(_) => out.push_str(&format!("{ATTR_OPEN}{n}{ATTR_CLOSE}")),
                HtmlState::Comment => out.push_str(&format!("hbs:{n}")),
                HtmlState::Tag => {
                    let line = src[..i].lines().count().max(1);
                    return Err(format!(
                        "line {line}: `{}` sits inside a tag; put it inside an attribute's quotes or around \
                         the whole element",
                        &src[i..end]
                    ));
                }
            }
            originals.push(src[i..end].to_owned());
            i = end;
            copied = end;
            continue;
        }
        let c = bytes[i];
        match state {
            HtmlState::Text if bytes[i..].starts_with(b"<!--") => {
                state = HtmlState::Comment;
                i += 4;
                continue;
            }
            HtmlState::Text if c == b'<' && bytes.get(i + 1).is_some_and(|n| n.is_ascii_alphabetic() || *n == b'/') => {
                state = HtmlState::Tag;
            }
            HtmlState::Tag if c == b'"' || c == b'\'' => state = HtmlState::Attr(c),
            HtmlState::Tag if c == b'>' => state = HtmlState::Text,
            HtmlState::Attr(q) if c == q => state = HtmlState::Tag,
            HtmlState::Comment if bytes[i..].starts_with(b"-->") => {
                state = HtmlState::Text;
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&src[copied..]);
    Ok((out, originals))
}

/// The end (exclusive) of the handlebars expression starting at `start`.
fn mustache_end(src: &str, start: usize) -> Result<usize, String> {
    let rest = &src[start..];
    let (close, open_len) = if rest.starts_with("{{!--") {
        ("--}}", 5)
    } else if rest.starts_with("{{{{") {
        return Err("raw blocks (`{{{{`) are not supported in HTML templates".into());
    } else if rest.starts_with("{{{") {
        ("}}}", 3)
    } else {
        ("}}", 2)
    };
    rest[open_len..]
        .find(close)
        .map(|i| start + open_len + i + close.len())
        .ok_or_else(|| {
            let line = src[..start].lines().count().max(1);
            format!("line {line}: `{{{{` is never closed")
        })
}

/// Puts the original expressions back; every placeholder must have survived.
fn restore(html: &str, originals: &[String]) -> Result<String, String> {
    let mut out = String::with_capacity(html.len() + originals.iter().map(String::len).sum::<usize>());
    let mut seen = vec![false; originals.len()];
    let mut rest = html;
    loop {
        let comment = rest.find("<!--hbs:").map(|i| (i, "<!--hbs:", "-->"));
        let attr = rest.find(ATTR_OPEN).map(|i| (i, "\u{E000}", "\u{E001}"));
        let next = match (comment, attr) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some((at, open, close)) = next else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..at]);
        let after = &rest[at + open.len()..];
        let end = after
            .find(close)
            .ok_or("a template placeholder was cut by the CSS inliner")?;
        let n: usize = after[..end]
            .parse()
            .map_err(|_| "a template placeholder was changed by the CSS inliner")?;
        let original = originals.get(n).ok_or("unknown template placeholder")?;
        out.push_str(original);
        seen[n] = true;
        rest = &after[end + close.len()..];
    }
    if let Some(n) = seen.iter().position(|s| !s) {
        return Err(format!(
            "`{}` was lost while inlining CSS: is it inside <title>, <style> or a style attribute?",
            originals[n]
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_between_table_rows_stay_in_the_table() {
        let css = ".cell { color: #123456; }";
        let html = "<table>{{#each data.items}}<tr><td class=\"cell\"><a href=\"{{link \"x\" id}}\">{{name}}</a></td></tr>{{/each}}</table>";
        let out = inline_css(html, css).unwrap();
        assert!(out.contains("<table>{{#each data.items}}"), "{out}");
        assert!(out.contains("{{/each}}</tbody></table>"), "{out}");
        assert!(out.contains("style=\"color: #123456;\""), "{out}");
        assert!(out.contains("href=\"{{link \"x\" id}}\""), "{out}");
        assert!(!out.contains("class=\"cell\"") || out.contains("style="));
    }

    #[test]
    fn expression_inside_a_tag_is_refused() {
        let err = inline_css("<td {{#if x}}class=\"a\"{{/if}}>y</td>", "").unwrap_err();
        assert!(err.contains("inside a tag"), "{err}");
    }

    #[test]
    fn full_documents_keep_their_head() {
        let out = inline_css(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body><p class=\"a\">{{> @partial-block}}</p></body></html>",
            ".a { margin: 0; }",
        )
        .unwrap();
        assert!(out.contains("<meta charset=\"utf-8\">"), "{out}");
        assert!(
            out.contains("<p class=\"a\" style=\"margin: 0;\">{{> @partial-block}}</p>"),
            "{out}"
        );
    }

    #[test]
    fn locale_names() {
        assert!(is_locale("de-DE"));
        assert!(!is_locale("de"));
        assert!(!is_locale("partials"));
    }
}
