//! API STUB — replaced by the catalogue implementation. Signatures are the contract.
use std::path::PathBuf;
use std::sync::Arc;

use http::Method;

/// The built-in catalogue text (every ACS operation), embedded in the binary.
pub const BUILTIN_TEXT: &str = "";

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

/// A named operation: the `operation` label value.
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

/// A route as written in a catalogue file.
#[derive(Debug)]
pub struct Route {
    /// Method.
    pub method: Method,
    /// Template as written, e.g. `/chat/threads/{chatThreadId}/messages`.
    pub template: String,
    /// Operation it names.
    pub operation: OperationId,
    /// Only for these `api-version` values (empty: any).
    pub when_api_version: Vec<String>,
    /// Informational list of API versions.
    pub api_versions: Vec<String>,
}

/// Body rule.
#[derive(Clone, Debug)]
pub struct BodyRule {
    /// JSON field.
    pub field: Arc<str>,
    /// Operation when every value of the field's object is null.
    pub when_all_null: OperationId,
}

impl BodyRule {
    /// Evaluates on a (possibly partial) body prefix.
    pub fn apply(&self, _body: &[u8]) -> Option<OperationId> {
        todo!()
    }
}

/// Result of classifying a request head.
#[derive(Clone, Debug)]
pub struct Classification {
    /// Operation.
    pub operation: OperationId,
    /// Body rule, when the body can change the operation.
    pub body_rule: Option<BodyRule>,
}

/// Error.
#[derive(Debug, thiserror::Error)]
#[error("catalogue error")]
pub struct CatalogueError;

/// Compiled catalogue.
#[derive(Debug)]
pub struct Catalogue;

impl Catalogue {
    /// Built-in.
    pub fn builtin() -> Catalogue {
        todo!()
    }
    /// Load.
    pub fn load(_include_builtin: bool, _files: &[PathBuf]) -> Result<Catalogue, CatalogueError> {
        todo!()
    }
    /// From texts.
    pub fn from_texts<'a>(
        _sources: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Catalogue, CatalogueError> {
        todo!()
    }
    /// Classify.
    pub fn classify(&self, _method: &Method, _path: &str, _query: Option<&str>) -> Classification {
        todo!()
    }
    /// Operations.
    pub fn operations(&self) -> &[Operation] {
        todo!()
    }
    /// Operation.
    pub fn operation(&self, _id: OperationId) -> &Operation {
        todo!()
    }
    /// Apis.
    pub fn apis(&self) -> &[Api] {
        todo!()
    }
    /// Api.
    pub fn api(&self, _id: ApiId) -> &Api {
        todo!()
    }
    /// Routes.
    pub fn routes(&self) -> &[Route] {
        todo!()
    }
}

