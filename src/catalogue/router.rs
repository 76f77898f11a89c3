//! Compiling parsed catalogue files into the lookup structures.
//!
//! One matchit entry per route *shape* (template with parameters renamed by
//! position); its value indexes a [`Shape`], which holds the per-method table.
//! The method table is what turns matchit's fallbacks (`abc:bogus` matching
//! the bare `{id}` route) into "Bad Route" for methods the shape lacks.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use http::Method;

use super::error::{CatalogueError, CatalogueErrorKind, line_of};
use super::file::{self, FileModel, RouteDecl};
use super::normalize::{compile_prefix, compile_template};
use super::{Api, ApiId, BodyRule, Operation, OperationId, Route, TemplateId};

/// Name of the api that requests matching no prefix are counted under.
pub(super) const UNKNOWN_API: &str = "unknown";
/// Operation name for requests no route names.
pub(super) const BAD_ROUTE: &str = "Bad Route";

/// What one method on one shape means.
#[derive(Clone, Debug)]
pub(super) struct Variant {
    pub(super) operation: OperationId,
    pub(super) body_rule: Option<BodyRule>,
    /// The template of the first route that defined it, as written (for access logs).
    pub(super) template: TemplateId,
    /// Index of the first route that defined it, for conflict messages.
    origin: usize,
}

impl Variant {
    fn same_meaning(&self, other: &Variant) -> bool {
        self.operation == other.operation
            && match (&self.body_rule, &other.body_rule) {
                (None, None) => true,
                (Some(a), Some(b)) => a.field == b.field && a.when_all_null == b.when_all_null,
                _ => false,
            }
    }
}

/// One method on one shape: a default meaning and api-version alternatives.
#[derive(Debug, Default)]
pub(super) struct MethodTable {
    pub(super) default: Option<Variant>,
    /// Empty for nearly every route, so the query is only read when needed.
    pub(super) by_version: Vec<(Box<str>, Variant)>,
}

impl MethodTable {
    /// The variant for a request's query string.
    pub(super) fn select(&self, query: Option<&str>) -> Option<&Variant> {
        if !self.by_version.is_empty() {
            if let Some(version) = query.and_then(super::normalize::api_version) {
                if let Some((_, v)) = self
                    .by_version
                    .iter()
                    .find(|(v, _)| v.eq_ignore_ascii_case(version))
                {
                    return Some(v);
                }
            }
        }
        self.default.as_ref()
    }

    /// Adds a variant; `Err` carries the route it conflicts with. The same
    /// meaning twice is merged (old and new parameter names of one route).
    fn place(&mut self, versions: &[String], variant: Variant) -> Result<(), usize> {
        if versions.is_empty() {
            return match &self.default {
                None => {
                    self.default = Some(variant);
                    Ok(())
                }
                Some(existing) if existing.same_meaning(&variant) => Ok(()),
                Some(existing) => Err(existing.origin),
            };
        }
        for version in versions {
            match self
                .by_version
                .iter()
                .find(|(v, _)| v.eq_ignore_ascii_case(version))
            {
                Some((_, existing)) if existing.same_meaning(&variant) => {}
                Some((_, existing)) => return Err(existing.origin),
                None => self
                    .by_version
                    .push((version.as_str().into(), variant.clone())),
            }
        }
        Ok(())
    }
}

/// A route shape: everything the router entry knows.
#[derive(Debug)]
pub(super) struct Shape {
    /// Api whose "Bad Route" an unknown method on this shape counts as.
    pub(super) api: ApiId,
    /// Params that begin a segment (bit i = param i); a value of one of those
    /// starting with `:` is an empty id before a verb.
    pub(super) segment_start_params: u64,
    pub(super) methods: Vec<(Method, MethodTable)>,
}

impl Shape {
    pub(super) fn method(&self, method: &Method) -> Option<&MethodTable> {
        self.methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, table)| table)
    }
}

/// The router keys grouped by the byte after their leading `/` (`c` for
/// `/chat/threads/{p0}` and `/calling/...`), each group in a router of its own.
///
/// A path can only match a key whose first byte it shares, so its group's
/// router finds what the whole router would; but the walk skips the shared
/// root (a `memcmp` call and a search among every api's first letters). A
/// byte rather than the whole first segment: finding and comparing segments
/// cost more than the walk it saved (974 -> 1,000 instructions per call).
#[derive(Debug)]
pub(super) struct FirstByte {
    routers: Vec<matchit::Router<u32>>,
    /// Router index + 1 by the byte after the `/` (slot 256: the path `/`); 0: none.
    slots: [u16; 257],
    /// Some key has a parameter right after its leading `/` (`/{tenant}/x`),
    /// which could match any first byte: the table is off and the whole router is used.
    wild: bool,
}

impl Default for FirstByte {
    fn default() -> Self {
        FirstByte {
            routers: Vec::new(),
            slots: [0; 257],
            wild: false,
        }
    }
}

/// The slot of a normalised path or router key: its byte after the leading `/`.
fn first_byte_slot(path: &str) -> usize {
    path.as_bytes().get(1).map_or(256, |&b| usize::from(b))
}

impl FirstByte {
    fn insert(&mut self, key: &str, value: u32) -> Result<(), matchit::InsertError> {
        if self.wild {
            return Ok(());
        }
        if key.as_bytes().get(1) == Some(&b'{') {
            *self = FirstByte {
                wild: true,
                ..FirstByte::default()
            };
            return Ok(());
        }
        let slot = first_byte_slot(key);
        let index = match self.slots[slot] {
            0 => {
                self.routers.push(matchit::Router::new());
                // At most 257 routers, one per slot.
                self.slots[slot] = u16::try_from(self.routers.len()).unwrap_or(u16::MAX);
                self.routers.len() - 1
            }
            n => usize::from(n) - 1,
        };
        match self.routers.get_mut(index) {
            Some(router) => router.insert(key, value),
            None => Ok(()),
        }
    }

    /// Whether the table is off (some key has a parameter right after its `/`).
    #[cfg(test)]
    pub(super) fn is_wild(&self) -> bool {
        self.wild
    }

    /// The router to look the normalised `path` up in: its group's, or `whole`
    /// when the table is off; `None` when no key has its first byte.
    pub(super) fn router<'a>(
        &'a self,
        whole: &'a matchit::Router<u32>,
        path: &str,
    ) -> Option<&'a matchit::Router<u32>> {
        if self.wild {
            return Some(whole);
        }
        let n = self.slots[first_byte_slot(path)];
        self.routers.get(usize::from(n).checked_sub(1)?)
    }
}

/// Everything a [`super::Catalogue`] holds.
#[derive(Debug)]
pub(super) struct Compiled {
    pub(super) apis: Vec<Api>,
    pub(super) operations: Vec<Operation>,
    pub(super) routes: Vec<Route>,
    /// Each route's template, indexed like `routes`.
    pub(super) templates: Vec<Arc<str>>,
    pub(super) router: matchit::Router<u32>,
    /// The same keys split by first byte; looked up before `router`.
    pub(super) first_byte: FirstByte,
    pub(super) shapes: Vec<Shape>,
    /// Longest first.
    pub(super) prefixes: Vec<(Box<str>, ApiId)>,
    pub(super) unknown: ApiId,
    pub(super) op_index: HashMap<(ApiId, String), OperationId>,
}

struct Origin<'a> {
    file: &'a str,
    line: usize,
}

struct Builder<'a> {
    apis: Vec<Api>,
    api_index: HashMap<String, ApiId>,
    prefix_owner: HashMap<String, (ApiId, Origin<'a>)>,
    operations: Vec<Operation>,
    op_index: HashMap<(ApiId, String), OperationId>,
    routes: Vec<Route>,
    origins: Vec<Origin<'a>>,
    router: matchit::Router<u32>,
    first_byte: FirstByte,
    shapes: Vec<Shape>,
    /// Router key -> (shape index, first route on it).
    shape_index: HashMap<String, (usize, usize)>,
}

/// Parses and compiles `sources` in order.
pub(super) fn compile<'a>(
    sources: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Compiled, CatalogueError> {
    let files = sources
        .into_iter()
        .map(|(name, text)| Ok((name, text, file::parse(name, text)?)))
        .collect::<Result<Vec<(&str, &str, FileModel)>, CatalogueError>>()?;

    let mut b = Builder {
        apis: Vec::new(),
        api_index: HashMap::new(),
        prefix_owner: HashMap::new(),
        operations: Vec::new(),
        op_index: HashMap::new(),
        routes: Vec::new(),
        origins: Vec::new(),
        router: matchit::Router::new(),
        first_byte: FirstByte::default(),
        shapes: Vec::new(),
        shape_index: HashMap::new(),
    };
    // Apis of every file first, so a route may use an api declared anywhere.
    for (name, text, model) in &files {
        for decl in &model.api {
            b.add_api(name, text, decl.get_ref())?;
        }
    }
    let unknown = b.new_api(UNKNOWN_API, "-")?;
    // Bad Route operations take the first ids: api i's is operation i.
    for i in 0..b.apis.len() {
        let api = b.apis[i].id;
        let id = b.operation(api, BAD_ROUTE, "-")?;
        b.apis[i].bad_route = id;
    }
    for (name, text, model) in &files {
        for decl in &model.route {
            let line = line_of(text, decl.span().start);
            b.add_route(name, text, line, decl.get_ref())?;
        }
    }

    let mut prefixes: Vec<(Box<str>, ApiId)> = b
        .prefix_owner
        .into_iter()
        .map(|(p, (api, _))| (p.into_boxed_str(), api))
        .collect();
    prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    let templates = b
        .routes
        .iter()
        .map(|r| r.template.as_str().into())
        .collect();
    Ok(Compiled {
        apis: b.apis,
        operations: b.operations,
        routes: b.routes,
        templates,
        router: b.router,
        first_byte: b.first_byte,
        shapes: b.shapes,
        prefixes,
        unknown,
        op_index: b.op_index,
    })
}

fn too_large(file: &str, what: &str) -> CatalogueError {
    CatalogueError::new(
        CatalogueErrorKind::TooLarge,
        file,
        None,
        format!("too many {what} (at most 65535)"),
    )
}

impl<'a> Builder<'a> {
    fn new_api(&mut self, name: &str, file: &str) -> Result<ApiId, CatalogueError> {
        let id = ApiId(u16::try_from(self.apis.len()).map_err(|_| too_large(file, "apis"))?);
        self.apis.push(Api {
            id,
            name: name.to_owned(),
            // Set once every api exists (Bad Routes take the first operation ids).
            bad_route: OperationId(0),
        });
        self.api_index.insert(name.to_owned(), id);
        Ok(id)
    }

    fn add_api(
        &mut self,
        file: &'a str,
        text: &str,
        decl: &file::ApiDecl,
    ) -> Result<(), CatalogueError> {
        let name = decl.name.get_ref();
        let at = |span: std::ops::Range<usize>| Some(line_of(text, span.start));
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
        if !valid || name == UNKNOWN_API {
            return Err(CatalogueError::new(
                CatalogueErrorKind::InvalidApi,
                file,
                at(decl.name.span()),
                format!(
                    "api name {name:?}: use lower-case letters, digits and '_' ({UNKNOWN_API:?} is reserved)"
                ),
            ));
        }
        let id = match self.api_index.get(name) {
            Some(&id) => id,
            None => self.new_api(name, file)?,
        };
        for prefix in &decl.prefixes {
            let line = line_of(text, prefix.span().start);
            let norm = compile_prefix(prefix.get_ref()).map_err(|m| {
                CatalogueError::new(
                    CatalogueErrorKind::InvalidApi,
                    file,
                    Some(line),
                    format!("api {name}: prefix {:?}: {m}", prefix.get_ref()),
                )
            })?;
            match self.prefix_owner.entry(norm) {
                Entry::Vacant(v) => {
                    v.insert((id, Origin { file, line }));
                }
                Entry::Occupied(o) if o.get().0 == id => {}
                Entry::Occupied(o) => {
                    let (owner, origin) = o.get();
                    return Err(CatalogueError::new(
                        CatalogueErrorKind::InvalidApi,
                        file,
                        Some(line),
                        format!(
                            "api {name}: prefix {:?} already belongs to api {} at {}:{}",
                            prefix.get_ref(),
                            self.apis[owner.0 as usize].name,
                            origin.file,
                            origin.line
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn operation(
        &mut self,
        api: ApiId,
        name: &str,
        file: &str,
    ) -> Result<OperationId, CatalogueError> {
        if let Some(&id) = self.op_index.get(&(api, name.to_owned())) {
            return Ok(id);
        }
        let id = OperationId(
            u16::try_from(self.operations.len()).map_err(|_| too_large(file, "operations"))?,
        );
        self.operations.push(Operation {
            id,
            name: name.to_owned(),
            api,
        });
        self.op_index.insert((api, name.to_owned()), id);
        Ok(id)
    }

    fn add_route(
        &mut self,
        file: &'a str,
        text: &str,
        line: usize,
        decl: &RouteDecl,
    ) -> Result<(), CatalogueError> {
        let label = format!("{} {}", decl.method.get_ref(), decl.path.get_ref());
        let err = |kind, span: Option<std::ops::Range<usize>>, msg: String| {
            let at = span.map_or(line, |s| line_of(text, s.start));
            CatalogueError::new(kind, file, Some(at), msg).with_route(Some(label.clone()))
        };

        let api_name = decl.api.get_ref();
        let api = *self.api_index.get(api_name.as_str()).ok_or_else(|| {
            err(
                CatalogueErrorKind::UnknownApi,
                Some(decl.api.span()),
                format!("unknown api {api_name:?} (declare it with [[api]])"),
            )
        })?;

        let method = parse_method(decl.method.get_ref()).map_err(|m| {
            err(
                CatalogueErrorKind::InvalidMethod,
                Some(decl.method.span()),
                m,
            )
        })?;

        let check_name = |name: &str| -> Result<(), String> {
            if name.trim().is_empty() || name.trim() != name {
                Err(format!(
                    "operation name {name:?} must be non-empty, without surrounding spaces"
                ))
            } else if name == BAD_ROUTE {
                Err(format!(
                    "operation name {BAD_ROUTE:?} is reserved for unmatched requests"
                ))
            } else {
                Ok(())
            }
        };
        let op_name = decl.operation.get_ref();
        check_name(op_name).map_err(|m| {
            err(
                CatalogueErrorKind::InvalidRoute,
                Some(decl.operation.span()),
                m,
            )
        })?;

        let template = compile_template(decl.path.get_ref()).map_err(|m| {
            err(
                CatalogueErrorKind::InvalidTemplate,
                Some(decl.path.span()),
                m,
            )
        })?;

        let mut versions = Vec::with_capacity(decl.when_api_version.len());
        for v in &decl.when_api_version {
            if v.get_ref().trim().is_empty() || v.get_ref().contains(['&', '=', ' ']) {
                return Err(err(
                    CatalogueErrorKind::InvalidRoute,
                    Some(v.span()),
                    format!(
                        "when_api_version value {:?} is not an api-version",
                        v.get_ref()
                    ),
                ));
            }
            versions.push(v.get_ref().clone());
        }

        let operation = self.operation(api, op_name, file)?;
        let body_rule = match &decl.body_all_null {
            None => None,
            Some(rule) => {
                let r = rule.get_ref();
                let span = Some(rule.span());
                if r.field.is_empty() {
                    return Err(err(
                        CatalogueErrorKind::InvalidRoute,
                        span,
                        "body_all_null: field must not be empty".into(),
                    ));
                }
                check_name(&r.operation).map_err(|m| {
                    err(
                        CatalogueErrorKind::InvalidRoute,
                        span.clone(),
                        format!("body_all_null: {m}"),
                    )
                })?;
                Some(BodyRule {
                    field: Arc::from(r.field.as_str()),
                    when_all_null: self.operation(api, &r.operation, file)?,
                })
            }
        };

        let route_index = self.routes.len();
        let template_id =
            TemplateId(u32::try_from(route_index).map_err(|_| too_large(file, "routes"))?);
        let shape_index = match self.shape_index.get(&template.key) {
            Some(&(shape, _)) => shape,
            None => {
                let shape = self.shapes.len();
                let value = u32::try_from(shape).map_err(|_| too_large(file, "route shapes"))?;
                if let Err(e) = self
                    .router
                    .insert(template.key.clone(), value)
                    .and_then(|()| self.first_byte.insert(&template.key, value))
                {
                    return Err(self.insert_error(e, err));
                }
                self.shapes.push(Shape {
                    api,
                    segment_start_params: template.segment_start_params,
                    methods: Vec::new(),
                });
                self.shape_index
                    .insert(template.key.clone(), (shape, route_index));
                shape
            }
        };

        let variant = Variant {
            operation,
            body_rule,
            template: template_id,
            origin: route_index,
        };
        let methods = &mut self.shapes[shape_index].methods;
        let table = match methods.iter().position(|(m, _)| *m == method) {
            Some(i) => &mut methods[i].1,
            None => {
                methods.push((method.clone(), MethodTable::default()));
                let last = methods.len() - 1;
                &mut methods[last].1
            }
        };
        if let Err(other) = table.place(&versions, variant) {
            let msg = format!("conflicts with route at {}", self.describe(other));
            let hint = if versions.is_empty() {
                "; tell them apart with when_api_version, or drop one"
            } else {
                ""
            };
            return Err(err(
                CatalogueErrorKind::Conflict,
                None,
                format!("{msg}{hint}"),
            ));
        }

        self.routes.push(Route {
            method,
            template: decl.path.get_ref().clone(),
            operation,
            when_api_version: versions,
            api_versions: decl.api_versions.clone(),
        });
        self.origins.push(Origin { file, line });
        Ok(())
    }

    /// `file:line (METHOD /template is Operation[ for api-version ...])`.
    fn describe(&self, route_index: usize) -> String {
        let (Some(r), Some(o)) = (self.routes.get(route_index), self.origins.get(route_index))
        else {
            return "an earlier route".into();
        };
        let op = &self.operations[r.operation.index()].name;
        let when = if r.when_api_version.is_empty() {
            String::new()
        } else {
            format!(" for api-version {}", r.when_api_version.join(", "))
        };
        format!(
            "{}:{} ({} {} is {op:?}{when})",
            o.file, o.line, r.method, r.template
        )
    }

    fn insert_error(
        &self,
        e: matchit::InsertError,
        err: impl Fn(CatalogueErrorKind, Option<std::ops::Range<usize>>, String) -> CatalogueError,
    ) -> CatalogueError {
        match e {
            matchit::InsertError::Conflict { with } => {
                let msg = match self.shape_index.get(&with) {
                    Some(&(_, route)) => format!(
                        "the router cannot hold it beside the route at {}",
                        self.describe(route)
                    ),
                    None => format!("the router cannot hold it beside {with}"),
                };
                err(CatalogueErrorKind::Conflict, None, msg)
            }
            matchit::InsertError::InvalidParamSegment => err(
                CatalogueErrorKind::InvalidTemplate,
                None,
                "only one parameter is allowed per path segment".into(),
            ),
            other => err(CatalogueErrorKind::InvalidTemplate, None, other.to_string()),
        }
    }
}

/// Methods are case-sensitive tokens; a lower-case `get` would never match a
/// real GET, so it is refused rather than silently dead.
fn parse_method(s: &str) -> Result<Method, String> {
    let token = !s.is_empty()
        && s.bytes().all(|c| {
            c.is_ascii_uppercase() || c.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&c)
        });
    if !token {
        return Err(format!(
            "invalid method {s:?}: write an upper-case HTTP method such as GET or POST"
        ));
    }
    Method::from_bytes(s.as_bytes()).map_err(|e| format!("invalid method {s:?}: {e}"))
}
