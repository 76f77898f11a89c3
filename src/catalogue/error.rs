//! Load errors: every one names the file and, when known, the line and route.

use std::fmt;

/// What went wrong while loading a catalogue (see [`CatalogueError::kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CatalogueErrorKind {
    /// The file could not be read.
    Io,
    /// TOML syntax error, unknown field, or a value of the wrong type.
    Syntax,
    /// An `[[api]]` entry is invalid (bad name or prefix, prefix claimed twice).
    InvalidApi,
    /// A route names an api that no `[[api]]` entry declares.
    UnknownApi,
    /// A route's method is not an upper-case HTTP method token.
    InvalidMethod,
    /// A route's path template is malformed or rejected by the router.
    InvalidTemplate,
    /// A route is otherwise invalid (empty or reserved operation name, bad body rule).
    InvalidRoute,
    /// Two routes give the same request two different operations.
    Conflict,
    /// More operations or route shapes than ids can number.
    TooLarge,
}

/// A catalogue could not be loaded.
///
/// Displays as `file:line: route METHOD /path: message`, the parts that are
/// not known left out, e.g.
/// `extra.toml:42: route POST /foo/{id}: conflicts with route at builtin:catalogue.toml:17 (...)`.
#[derive(Debug, thiserror::Error)]
#[error("{}", Rendered(self))]
pub struct CatalogueError {
    kind: CatalogueErrorKind,
    file: String,
    line: Option<usize>,
    route: Option<String>,
    message: String,
}

struct Rendered<'a>(&'a CatalogueError);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        f.write_str(&e.file)?;
        if let Some(line) = e.line {
            write!(f, ":{line}")?;
        }
        if let Some(route) = &e.route {
            write!(f, ": route {route}")?;
        }
        write!(f, ": {}", e.message)
    }
}

impl CatalogueError {
    pub(super) fn new(
        kind: CatalogueErrorKind,
        file: &str,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        CatalogueError {
            kind,
            file: file.to_owned(),
            line,
            route: None,
            message: message.into(),
        }
    }

    pub(super) fn with_route(mut self, route: Option<String>) -> Self {
        self.route = route;
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> CatalogueErrorKind {
        self.kind
    }

    /// The file (or source name given to [`super::Catalogue::from_texts`]).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The 1-based line, when the error has a position.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The route as `METHOD /template`, when the error is about one route.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// The message without file, line and route.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// 1-based line number of a byte offset in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
