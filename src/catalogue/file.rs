//! The catalogue file format (serde model), parsed with byte spans for error lines.

use serde::Deserialize;
use toml::Spanned;

use super::error::{CatalogueError, CatalogueErrorKind, line_of};

/// One catalogue file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileModel {
    #[serde(default)]
    pub(super) api: Vec<Spanned<ApiDecl>>,
    #[serde(default)]
    pub(super) route: Vec<Spanned<RouteDecl>>,
}

/// `[[api]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiDecl {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) prefixes: Vec<Spanned<String>>,
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteDecl {
    pub(super) api: Spanned<String>,
    pub(super) operation: Spanned<String>,
    pub(super) method: Spanned<String>,
    pub(super) path: Spanned<String>,
    #[serde(default)]
    pub(super) api_versions: Vec<String>,
    #[serde(default)]
    pub(super) when_api_version: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) body_all_null: Option<Spanned<BodyAllNullDecl>>,
}

/// `body_all_null = { field = "...", operation = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BodyAllNullDecl {
    pub(super) field: String,
    pub(super) operation: String,
}

/// Parses one file; a syntax or schema error names the file, the line and,
/// when the error sits inside a `[[route]]`, that route.
pub(super) fn parse(file: &str, text: &str) -> Result<FileModel, CatalogueError> {
    toml::from_str::<FileModel>(text).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        let line = offset.map(|o| line_of(text, o));
        let route = offset.and_then(|o| enclosing_route(text, o));
        CatalogueError::new(CatalogueErrorKind::Syntax, file, line, e.message().trim())
            .with_route(route)
    })
}

/// Best effort: `METHOD /path` of the `[[route]]` table around byte `offset`,
/// so that an unknown-field error says which route it is in.
fn enclosing_route(text: &str, offset: usize) -> Option<String> {
    let mut start = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        if pos > offset {
            break;
        }
        let t = line.trim_start();
        if t.starts_with('[') {
            start = (t.trim_end() == "[[route]]").then_some(pos + line.len());
        }
        pos += line.len();
    }
    let body_start = start?;
    // The table runs to the next header line.
    let mut end = text.len();
    let mut p = body_start;
    for line in text[body_start..].split_inclusive('\n') {
        if line.trim_start().starts_with('[') {
            end = p;
            break;
        }
        p += line.len();
    }
    let table: toml::Table = toml::from_str(&text[body_start..end]).ok()?;
    let method = table.get("method")?.as_str()?;
    let path = table.get("path")?.as_str()?;
    Some(format!("{method} {path}"))
}
