//! The operation catalogue: which ACS operation (and api) a request is.
//!
//! Routes are data ([`BUILTIN_TEXT`], plus user files in the same TOML
//! format, documented at the top of `config/catalogue.toml`). They are
//! compiled once into a matchit router whose entries are route *shapes*
//! (parameters renamed by position, literals lower-cased); each shape holds a
//! small per-method table, with optional `api-version` alternatives and an
//! optional [`BodyRule`]. [`Catalogue::classify`] is the hot path: it
//! normalises the path into a reused thread-local buffer, so it allocates
//! nothing, and it never panics.
//!
//! Every request gets an operation: a path or method no route names is its
//! api's `Bad Route` (the api found by path prefix, else `unknown`), the value
//! Azure's own metrics use for unrecognised requests.

mod error;
mod file;
mod normalize;
mod router;

use std::path::PathBuf;
use std::sync::Arc;

use http::Method;

pub use error::{CatalogueError, CatalogueErrorKind};

/// The built-in catalogue text (every ACS operation), embedded in the binary.
pub const BUILTIN_TEXT: &str = include_str!("../../config/catalogue.toml");

/// The source name errors and route origins use for [`BUILTIN_TEXT`].
pub const BUILTIN_SOURCE: &str = "builtin:catalogue.toml";

/// Name of the api that requests matching no api prefix are counted under.
pub const UNKNOWN_API: &str = router::UNKNOWN_API;

/// Operation name of requests that no route names.
pub const BAD_ROUTE: &str = router::BAD_ROUTE;

/// Index of an operation in [`Catalogue::operations`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperationId(u16);

impl OperationId {
    /// The index into [`Catalogue::operations`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Index of an API in [`Catalogue::apis`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiId(u16);

impl ApiId {
    /// The index into [`Catalogue::apis`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A route's template in [`Catalogue::template`]: the index of the route in
/// [`Catalogue::routes`] that first defined the matched meaning.
///
/// A [`Classification`] carries this copyable index rather than the string, so classifying
/// a request touches no reference count; the template is looked up only where it is shown
/// (request spans, access logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TemplateId(u32);

impl TemplateId {
    /// The index into [`Catalogue::templates`] (and [`Catalogue::routes`]).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A named operation: the `operation` label value.
///
/// There is one per distinct (api, name) pair, plus one `Bad Route` per api.
#[derive(Debug)]
pub struct Operation {
    /// This operation's id.
    pub id: OperationId,
    /// Azure's name, e.g. `SendChatMessage`, `Create Call`, or `Bad Route`.
    pub name: String,
    /// The API it belongs to.
    pub api: ApiId,
}

/// An API family: the `api` label value.
#[derive(Debug)]
pub struct Api {
    /// This api's id.
    pub id: ApiId,
    /// e.g. `chat`, `call_automation`, `unknown`.
    pub name: String,
    /// Its `Bad Route` operation.
    pub bad_route: OperationId,
}

/// A route as written in a catalogue file (identical duplicates included).
#[derive(Debug)]
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// Template as written, e.g. `/chat/threads/{chatThreadId}/messages`.
    pub template: String,
    /// The operation it names (the default one when it has a body rule).
    pub operation: OperationId,
    /// The route applies only for these `api-version` values (empty: any
    /// version not claimed by another route's list).
    pub when_api_version: Vec<String>,
    /// Informational list of API versions the route was seen in.
    pub api_versions: Vec<String>,
}

/// An operation that only the request body can tell: when the JSON body's
/// `field` is a non-empty object whose values are all `null`, the request is
/// `when_all_null` instead of the classified operation (Rooms
/// `PATCH /rooms/{roomId}/participants`: remove rather than add/update).
#[derive(Clone, Debug)]
pub struct BodyRule {
    /// Top-level JSON field holding the object to inspect.
    pub field: Arc<str>,
    /// Operation when every value of the field's object is null.
    pub when_all_null: OperationId,
}

impl BodyRule {
    /// Evaluates the rule on a body (or the prefix of one read so far).
    ///
    /// `Some(when_all_null)` only when `body` is a complete JSON object whose
    /// `field` is a non-empty object with every value `null`. Anything else
    /// (not JSON, truncated, field missing or not an object, a non-null
    /// value) is `None`: keep the classified operation.
    pub fn apply(&self, body: &[u8]) -> Option<OperationId> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let inner = value.as_object()?.get(&*self.field)?.as_object()?;
        (!inner.is_empty() && inner.values().all(serde_json::Value::is_null))
            .then_some(self.when_all_null)
    }
}

/// Result of classifying a request head.
#[derive(Clone, Debug)]
pub struct Classification {
    /// The operation (possibly a `Bad Route`); its api is the request's api.
    pub operation: OperationId,
    /// Set when the body can change the operation; see [`BodyRule::apply`].
    pub body_rule: Option<BodyRule>,
    /// The matched route's template as written (`/chat/threads/{chatThreadId}/messages`),
    /// see [`Catalogue::template`]; `None` for a `Bad Route`. Ids never appear in it, so
    /// access logs can show it.
    pub template: Option<TemplateId>,
}

/// A compiled catalogue: immutable, cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Catalogue {
    inner: router::Compiled,
}

impl Catalogue {
    /// The built-in ACS catalogue alone.
    ///
    /// # Panics
    ///
    /// Never in a released build: the built-in text is compiled by the unit
    /// tests, so an error in it fails the build's tests, not a deployment.
    pub fn builtin() -> Catalogue {
        match Catalogue::from_texts([(BUILTIN_SOURCE, BUILTIN_TEXT)]) {
            Ok(c) => c,
            Err(e) => panic!("built-in catalogue does not compile: {e}"),
        }
    }

    /// The built-in catalogue (unless `include_builtin` is false: the files
    /// then replace it) followed by `files`, merged in that order.
    ///
    /// Routes may use apis declared in any of the files. Errors name the
    /// file (its path as given), the line and the route.
    pub fn load(include_builtin: bool, files: &[PathBuf]) -> Result<Catalogue, CatalogueError> {
        let mut texts = Vec::with_capacity(files.len());
        for path in files {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| {
                CatalogueError::new(
                    CatalogueErrorKind::Io,
                    &name,
                    None,
                    format!("cannot read: {e}"),
                )
            })?;
            texts.push((name, text));
        }
        let builtin = include_builtin.then_some((BUILTIN_SOURCE, BUILTIN_TEXT));
        Catalogue::from_texts(
            builtin
                .into_iter()
                .chain(texts.iter().map(|(n, t)| (n.as_str(), t.as_str()))),
        )
    }

    /// Compiles catalogue texts given as (source name, TOML text) pairs, in
    /// order. The built-in text is not included unless passed.
    pub fn from_texts<'a>(
        sources: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Catalogue, CatalogueError> {
        Ok(Catalogue {
            inner: router::compile(sources)?,
        })
    }

    /// Names the operation of a request from its method, raw (undecoded)
    /// path and query string (without `?`).
    ///
    /// The query is read only when the matched method has `api-version`
    /// alternatives. Allocation-free, and total: any input yields an
    /// operation, `Bad Route` when no route names it.
    pub fn classify(&self, method: &Method, path: &str, query: Option<&str>) -> Classification {
        normalize::with_normalized(path, |p| self.classify_normalized(method, p, query))
    }

    fn classify_normalized(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Classification {
        let c = &self.inner;
        let found = c.first_byte.router(&c.router, path).map(|r| r.at(path));
        let Some(Ok(m)) = found else {
            return self.bad_route(self.api_of_normalized(path));
        };
        let Some(shape) = c.shapes.get(*m.value as usize) else {
            return self.bad_route(c.unknown);
        };
        // matchit hands `/callConnections/:terminate` to the bare `{id}` route
        // with id ":terminate". An empty segment is never a parameter value,
        // so that is a verb without its target. Such a value sits right after
        // a '/', so paths without "/:" skip the parameter walk.
        if shape.segment_start_params != 0
            && path.contains("/:")
            && m.params.iter().enumerate().any(|(i, (_, v))| {
                i < 64 && shape.segment_start_params & (1 << i) != 0 && v.starts_with(':')
            })
        {
            return self.bad_route(shape.api);
        }
        match shape.method(method).and_then(|t| t.select(query)) {
            Some(v) => Classification {
                operation: v.operation,
                body_rule: v.body_rule.clone(),
                template: Some(v.template),
            },
            None => self.bad_route(shape.api),
        }
    }

    fn bad_route(&self, api: ApiId) -> Classification {
        Classification {
            operation: self.api(api).bad_route,
            body_rule: None,
            template: None,
        }
    }

    /// The api a normalised path belongs to by prefix, else `unknown`.
    fn api_of_normalized(&self, path: &str) -> ApiId {
        self.inner
            .prefixes
            .iter()
            .find(|(prefix, _)| normalize::prefix_matches(path, prefix))
            .map_or(self.inner.unknown, |&(_, api)| api)
    }

    /// Every operation, indexed by [`OperationId::index`]: the `Bad Route`s
    /// first (api *i*'s is operation *i*), then named ones in file order.
    pub fn operations(&self) -> &[Operation] {
        &self.inner.operations
    }

    /// The operation with this id.
    ///
    /// # Panics
    ///
    /// If `id` comes from another catalogue with more operations.
    pub fn operation(&self, id: OperationId) -> &Operation {
        &self.inner.operations[id.index()]
    }

    /// Every api, indexed by [`ApiId::index`], in declaration order; `unknown` last.
    pub fn apis(&self) -> &[Api] {
        &self.inner.apis
    }

    /// The api with this id.
    ///
    /// # Panics
    ///
    /// If `id` comes from another catalogue with more apis.
    pub fn api(&self, id: ApiId) -> &Api {
        &self.inner.apis[id.index()]
    }

    /// Every route in file order, identical duplicates included.
    pub fn routes(&self) -> &[Route] {
        &self.inner.routes
    }

    /// A route template as written, e.g. `/chat/threads/{chatThreadId}/messages`.
    ///
    /// # Panics
    ///
    /// If `id` comes from another catalogue with more routes.
    pub fn template(&self, id: TemplateId) -> &Arc<str> {
        &self.inner.templates[id.index()]
    }

    /// Every route template, indexed like [`Catalogue::routes`]; a [`TemplateId`] indexes it.
    pub fn templates(&self) -> &[Arc<str>] {
        &self.inner.templates
    }

    /// The api named `name`, if declared (`unknown` always is).
    pub fn find_api(&self, name: &str) -> Option<ApiId> {
        self.inner
            .apis
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.id)
    }

    /// The operation named `name` in api `api`, if any route (or the
    /// `Bad Route` rule) defines it.
    pub fn find_operation(&self, api: &str, name: &str) -> Option<OperationId> {
        let api = self.find_api(api)?;
        self.inner.op_index.get(&(api, name.to_owned())).copied()
    }

    /// The `unknown` api: requests matching no route and no api prefix.
    pub fn unknown_api(&self) -> ApiId {
        self.inner.unknown
    }
}

#[cfg(test)]
mod tests;
