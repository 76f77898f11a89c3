//! Unit tests: compilation rules, error messages, selection rules.

use super::*;

const APIS: &str = r#"
[[api]]
name = "calls"
prefixes = ["/calls"]
"#;

fn cat(extra: &str) -> Result<Catalogue, CatalogueError> {
    Catalogue::from_texts([("apis.toml", APIS), ("extra.toml", extra)])
}

fn name(c: &Catalogue, method: &str, path: &str, query: Option<&str>) -> String {
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let op = c.classify(&m, path, query).operation;
    let op = c.operation(op);
    format!("{}/{}", c.api(op.api).name, op.name)
}

#[test]
fn builtin_compiles() {
    let c = Catalogue::builtin();
    assert!(c.routes().len() > 100);
    // The Bad Route of api i is operation i.
    for api in c.apis() {
        assert_eq!(api.bad_route.index(), api.id.index());
        assert_eq!(c.operation(api.bad_route).name, BAD_ROUTE);
        assert_eq!(c.operation(api.bad_route).api, api.id);
    }
    assert_eq!(c.api(c.unknown_api()).name, UNKNOWN_API);
    for (i, op) in c.operations().iter().enumerate() {
        assert_eq!(op.id.index(), i);
    }
}

#[test]
fn same_shape_with_other_param_names_merges() {
    let c = cat(r#"
[[route]]
api = "calls"
operation = "Get"
method = "GET"
path = "/calls/{callId}"

[[route]]
api = "calls"
operation = "Get"
method = "GET"
path = "/Calls/{id}"

[[route]]
api = "calls"
operation = "Drop"
method = "DELETE"
path = "/calls/{x}"
"#)
    .unwrap();
    assert_eq!(c.routes().len(), 3);
    assert_eq!(name(&c, "GET", "/calls/1", None), "calls/Get");
    assert_eq!(name(&c, "DELETE", "/calls/1", None), "calls/Drop");
    assert_eq!(name(&c, "PUT", "/calls/1", None), "calls/Bad Route");
    assert_eq!(name(&c, "GET", "/nope", None), "unknown/Bad Route");
    // The template is the first definer's, as written; a Bad Route has none.
    let template = |method: Method, path| {
        let id = c.classify(&method, path, None).template;
        id.map(|id| c.template(id).to_string())
    };
    assert_eq!(
        template(Method::GET, "/CALLS/8:acs:secret-id").as_deref(),
        Some("/calls/{callId}")
    );
    assert_eq!(template(Method::PUT, "/calls/8:acs:secret-id"), None);
    assert_eq!(template(Method::GET, "/nope/8:acs:secret-id"), None);
}

#[test]
fn conflict_names_both_routes_and_lines() {
    let extra = r#"
[[route]]
api = "calls"
operation = "Get"
method = "GET"
path = "/calls/{callId}"

[[route]]
api = "calls"
operation = "Fetch"
method = "GET"
path = "/calls/{id}"
"#;
    let e = cat(extra).unwrap_err();
    assert_eq!(e.kind(), CatalogueErrorKind::Conflict);
    assert_eq!(e.file(), "extra.toml");
    assert_eq!(e.line(), Some(8));
    assert_eq!(e.route(), Some("GET /calls/{id}"));
    let text = e.to_string();
    assert!(
        text.starts_with("extra.toml:8: route GET /calls/{id}: conflicts with route at extra.toml:2 (GET /calls/{callId} is \"Get\")"),
        "{text}"
    );
}

#[test]
fn conflict_across_files_names_the_builtin() {
    let user = r#"
[[route]]
api = "chat"
operation = "Mine"
method = "POST"
path = "/chat/threads/{t}/messages"
"#;
    let e =
        Catalogue::from_texts([(BUILTIN_SOURCE, BUILTIN_TEXT), ("user.toml", user)]).unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("user.toml:2: route POST /chat/threads/{t}/messages: conflicts with route at builtin:catalogue.toml:"), "{text}");
    assert!(text.contains("SendChatMessage"), "{text}");
}

#[test]
fn api_version_alternatives() {
    let c = cat(r#"
[[route]]
api = "calls"
operation = "HangUp"
method = "DELETE"
path = "/calls/{id}"

[[route]]
api = "calls"
operation = "Delete"
method = "DELETE"
path = "/calls/{callId}"
when_api_version = ["2021-11-15-preview", "2021-01-01"]

[[route]]
api = "calls"
operation = "OnlyOld"
method = "GET"
path = "/calls/{callId}"
when_api_version = ["old"]
"#)
    .unwrap();
    let n = |q| name(&c, "DELETE", "/calls/c1", q);
    assert_eq!(n(Some("api-version=2021-11-15-preview")), "calls/Delete");
    assert_eq!(n(Some("x=1&api-version=2021-01-01&y")), "calls/Delete");
    assert_eq!(n(Some("api-version=2023-03-06")), "calls/HangUp");
    assert_eq!(n(Some("junk&&=&")), "calls/HangUp");
    assert_eq!(n(None), "calls/HangUp");
    // No default: other versions are a Bad Route.
    assert_eq!(
        name(&c, "GET", "/calls/c1", Some("api-version=old")),
        "calls/OnlyOld"
    );
    assert_eq!(
        name(&c, "GET", "/calls/c1", Some("api-version=new")),
        "calls/Bad Route"
    );
}

#[test]
fn duplicated_version_alternative_conflicts() {
    let e = cat(r#"
[[route]]
api = "calls"
operation = "A"
method = "DELETE"
path = "/calls/{id}"
when_api_version = ["v1"]

[[route]]
api = "calls"
operation = "B"
method = "DELETE"
path = "/calls/{id}"
when_api_version = ["v2", "V1"]
"#)
    .unwrap_err();
    assert_eq!(e.kind(), CatalogueErrorKind::Conflict);
    assert_eq!(e.line(), Some(9));
    assert!(e.to_string().contains("for api-version v1"), "{e}");
}

#[test]
fn body_rule_is_returned_and_applied() {
    let c = cat(r#"
[[route]]
api = "calls"
operation = "Update"
method = "PATCH"
path = "/calls/{id}/people"
body_all_null = { field = "people", operation = "Remove" }
"#)
    .unwrap();
    let cl = c.classify(&Method::PATCH, "/calls/1/people", None);
    assert_eq!(c.operation(cl.operation).name, "Update");
    let rule = cl.body_rule.expect("body rule");
    let remove = c.find_operation("calls", "Remove").unwrap();
    assert_eq!(rule.when_all_null, remove);
    assert_eq!(
        rule.apply(br#"{"people":{"8:acs:a":null,"8:acs:b":null}}"#),
        Some(remove)
    );
    assert_eq!(
        rule.apply(br#" {"x":1, "people" : {"a":null}} "#),
        Some(remove)
    );
    for body in [
        &br#"{"people":{"a":null,"b":{"role":"Presenter"}}}"#[..],
        br#"{"people":{}}"#,
        br#"{"people":null}"#,
        br#"{"people":[null]}"#,
        br#"{"other":{"a":null}}"#,
        br#"{"people":{"a":null}"#, // truncated
        br#"[{"people":{"a":null}}]"#,
        b"",
        b"\xff\xfe",
        b"people=null",
    ] {
        assert_eq!(rule.apply(body), None, "{}", String::from_utf8_lossy(body));
    }
    // Other methods carry no rule.
    assert!(
        c.classify(&Method::GET, "/calls/1/people", None)
            .body_rule
            .is_none()
    );
}

#[test]
fn body_rule_difference_is_a_conflict() {
    let e = cat(r#"
[[route]]
api = "calls"
operation = "Update"
method = "PATCH"
path = "/calls/{id}"
body_all_null = { field = "people", operation = "Remove" }

[[route]]
api = "calls"
operation = "Update"
method = "PATCH"
path = "/calls/{id}"
"#)
    .unwrap_err();
    assert_eq!(e.kind(), CatalogueErrorKind::Conflict);
}

#[test]
fn syntax_error_names_file_and_line() {
    let e = cat("[[route]]\napi = \"calls\"\noperation = \"X\nmethod = \"GET\"\n").unwrap_err();
    assert_eq!(e.kind(), CatalogueErrorKind::Syntax);
    assert_eq!(e.file(), "extra.toml");
    assert_eq!(e.line(), Some(3), "{e}");
    assert!(e.to_string().starts_with("extra.toml:3: "), "{e}");
}

#[test]
fn unknown_field_names_line_and_route() {
    let e = cat(r#"
[[route]]
api = "calls"
operation = "Get"
method = "GET"
path = "/calls/{id}"

[[route]]
api = "calls"
operation = "Put"
method = "PUT"
path = "/calls/{id}"
when_version = ["x"]
"#)
    .unwrap_err();
    assert_eq!(e.kind(), CatalogueErrorKind::Syntax);
    assert_eq!(e.line(), Some(13), "{e}");
    assert_eq!(e.route(), Some("PUT /calls/{id}"), "{e}");
    assert!(e.message().contains("when_version"), "{e}");
}

#[test]
fn invalid_entries_name_line_and_route() {
    let route = |field: &str, value: &str| {
        let mut r = vec![
            ("api", "\"calls\""),
            ("operation", "\"Op\""),
            ("method", "\"GET\""),
            ("path", "\"/calls/{id}\""),
        ];
        for (k, v) in &mut r {
            if *k == field {
                *v = value;
            }
        }
        let mut s = String::from("# leading comment\n[[route]]\n");
        for (k, v) in r {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s
    };
    let cases = [
        ("api", "\"nope\"", CatalogueErrorKind::UnknownApi, 3),
        ("method", "\"get\"", CatalogueErrorKind::InvalidMethod, 5),
        ("method", "\"G T\"", CatalogueErrorKind::InvalidMethod, 5),
        (
            "operation",
            "\"Bad Route\"",
            CatalogueErrorKind::InvalidRoute,
            4,
        ),
        ("operation", "\"\"", CatalogueErrorKind::InvalidRoute, 4),
        (
            "path",
            "\"/calls/{a}{b}\"",
            CatalogueErrorKind::InvalidTemplate,
            2,
        ),
        (
            "path",
            "\"/calls/\"",
            CatalogueErrorKind::InvalidTemplate,
            6,
        ),
        (
            "path",
            "\"/calls/{id\"",
            CatalogueErrorKind::InvalidTemplate,
            6,
        ),
    ];
    for (field, value, kind, line) in cases {
        let e = cat(&route(field, value)).unwrap_err();
        assert_eq!(e.kind(), kind, "{field}={value}: {e}");
        assert_eq!(e.line(), Some(line), "{field}={value}: {e}");
        assert!(e.route().is_some(), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("extra.toml:{line}: route ")),
            "{e}"
        );
    }
}

#[test]
fn invalid_api_declarations() {
    for (text, line) in [
        ("[[api]]\nname = \"unknown\"\n", 2),
        ("[[api]]\nname = \"Chat\"\n", 2),
        ("[[api]]\nname = \"x\"\nprefixes = [\"/x/\"]\n", 3),
        (
            "[[api]]\nname = \"x\"\nprefixes = [\n  \"/a\",\n  \"/CALLS\",\n]\n",
            5,
        ),
    ] {
        let e = cat(text).unwrap_err();
        assert_eq!(e.kind(), CatalogueErrorKind::InvalidApi, "{text}: {e}");
        assert_eq!(e.line(), Some(line), "{text}: {e}");
    }
    // Re-declaring an api adds prefixes.
    let c = cat("[[api]]\nname = \"calls\"\nprefixes = [\"/phone\"]\n").unwrap();
    assert_eq!(name(&c, "GET", "/Phone/x", None), "calls/Bad Route");
    assert_eq!(name(&c, "GET", "/calls", None), "calls/Bad Route");
}

#[test]
fn literal_beats_param_and_verbs_in_all_placements() {
    let c = cat(r#"
[[route]]
api = "calls"
operation = "Add"
method = "POST"
path = "/calls/{id}/people/:add"

[[route]]
api = "calls"
operation = "Kick"
method = "DELETE"
path = "/calls/{id}/people/{personId}"

[[route]]
api = "calls"
operation = "Answer"
method = "POST"
path = "/calls:answer"

[[route]]
api = "calls"
operation = "Stop"
method = "POST"
path = "/calls/{id}:stop"

[[route]]
api = "calls"
operation = "Get"
method = "GET"
path = "/calls/{id}"
"#)
    .unwrap();
    assert_eq!(
        name(&c, "POST", "/calls/19:a@x/people/:add", None),
        "calls/Add"
    );
    assert_eq!(
        name(&c, "DELETE", "/calls/1/people/4:+1425", None),
        "calls/Kick"
    );
    assert_eq!(
        name(&c, "DELETE", "/calls/1/people/:add", None),
        "calls/Bad Route"
    );
    assert_eq!(name(&c, "POST", "/CALLS:Answer", None), "calls/Answer");
    assert_eq!(name(&c, "POST", "/calls:bogus", None), "calls/Bad Route");
    assert_eq!(name(&c, "POST", "/calls/a:b:stop", None), "calls/Stop");
    assert_eq!(name(&c, "POST", "/calls/a:bogus", None), "calls/Bad Route");
    assert_eq!(name(&c, "GET", "/calls/8:acs:x", None), "calls/Get");
    // An encoded colon never forms a verb.
    assert_eq!(name(&c, "POST", "/calls/a%3Astop", None), "calls/Bad Route");
    // A verb with no id before it.
    assert_eq!(name(&c, "POST", "/calls/:stop", None), "calls/Bad Route");
    assert_eq!(name(&c, "GET", "/calls/:stop", None), "calls/Bad Route");
}

#[test]
fn catch_all_routes_work() {
    let c = cat(r#"
[[route]]
api = "calls"
operation = "Files"
method = "GET"
path = "/calls/files/{*rest}"
"#)
    .unwrap();
    assert_eq!(name(&c, "GET", "/calls/files/a/:b/c", None), "calls/Files");
    assert_eq!(name(&c, "GET", "/calls/files", None), "calls/Bad Route");
}

#[test]
fn replacement_mode_has_only_unknown() {
    let c = Catalogue::load(false, &[]).unwrap();
    assert_eq!(c.apis().len(), 1);
    assert_eq!(c.operations().len(), 1);
    assert_eq!(name(&c, "GET", "/chat/threads", None), "unknown/Bad Route");
}

#[test]
fn load_reports_missing_file() {
    let e = Catalogue::load(true, &[PathBuf::from("/nonexistent/x.toml")]).unwrap_err();
    assert_eq!(e.kind(), CatalogueErrorKind::Io);
    assert!(
        e.to_string()
            .starts_with("/nonexistent/x.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn classify_does_not_panic_on_odd_input() {
    let c = Catalogue::builtin();
    let ext = Method::from_bytes(b"BREW").unwrap();
    for p in [
        "",
        "*",
        "/",
        "//",
        "{",
        "/{p0}",
        "/%",
        "/:",
        "/::::",
        "/rooms/{roomId}",
        "\u{0}",
        "/ü/✓",
    ] {
        for m in [&Method::GET, &Method::POST, &ext] {
            let op = c.classify(m, p, Some("api-version")).operation;
            assert!(op.index() < c.operations().len());
        }
    }
}

#[test]
fn catalogue_can_be_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Catalogue>();
    shared::<Classification>();
}

/// What the whole router and the first-byte table give for a normalised path.
fn both_lookups(c: &Catalogue, path: &str) -> (Option<u32>, Option<u32>) {
    let r = &c.inner;
    let whole = r.router.at(path).ok().map(|m| *m.value);
    let table = r
        .first_byte
        .router(&r.router, path)
        .and_then(|router| router.at(path).ok())
        .map(|m| *m.value);
    (whole, table)
}

#[test]
fn first_byte_table_agrees_with_the_whole_router() {
    let c = Catalogue::builtin();
    assert!(!c.inner.first_byte.is_wild());
    let mut paths: Vec<String> = [
        "/",
        "/:",
        "/::",
        "/x",
        "/sms",
        "/sms:x",
        "/smsx",
        "/sm",
        "/room",
        "/rooms",
        "/roomsx",
        "/emails",
        "/emails:send",
        "/emails:sendx",
        "/emails:",
        "/chat/threads/x/unknown/thing",
        "/{p0}",
        "/%",
        "/ü/✓",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    // Every route with ids of every awkward kind, and near misses after it.
    for route in c.routes() {
        for id in ["abc", "19:a1b2@thread.v2", ":x", "a:b:c", "x/y", "%3a", "ü"] {
            let mut path = String::new();
            let mut rest = route.template.as_str();
            while let Some(open) = rest.find('{') {
                path.push_str(&rest[..open]);
                path.push_str(id);
                let close = rest[open..].find('}').map_or(rest.len(), |i| open + i + 1);
                rest = &rest[close..];
            }
            path.push_str(rest);
            for tail in ["", "/x", ":verb", "x", "/:x"] {
                paths.push(format!("{path}{tail}"));
            }
        }
    }
    let mut matched = 0;
    for path in &paths {
        let normal = normalize::with_normalized(path, str::to_owned);
        let (whole, table) = both_lookups(&c, &normal);
        assert_eq!(whole, table, "{normal}");
        matched += usize::from(whole.is_some());
    }
    assert!(matched > c.routes().len(), "{matched}");
}

#[test]
fn first_byte_table_is_off_when_a_key_starts_with_a_parameter() {
    let c = cat(r#"
[[route]]
api = "calls"
operation = "Get"
method = "GET"
path = "/calls/{id}"

[[route]]
api = "calls"
operation = "Tenant"
method = "GET"
path = "/{tenant}/calls"
"#)
    .unwrap();
    assert!(c.inner.first_byte.is_wild());
    assert_eq!(name(&c, "GET", "/calls/1", None), "calls/Get");
    assert_eq!(name(&c, "GET", "/t1/calls", None), "calls/Tenant");
    assert_eq!(name(&c, "GET", "/calls/calls", None), "calls/Get");
    for path in ["/calls/1", "/t1/calls", "/calls/calls", "/x/y"] {
        let (whole, table) = both_lookups(&c, path);
        assert_eq!(whole, table, "{path}");
    }
}
