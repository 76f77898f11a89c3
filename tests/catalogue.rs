//! The built-in catalogue against the ACS route table (`tests/data/operations.tsv`),
//! a corpus of near-miss paths, load errors, and a no-panic property.

use std::collections::BTreeSet;

use acsgate::catalogue::{BAD_ROUTE, Catalogue, CatalogueErrorKind, UNKNOWN_API};
use http::Method;
use proptest::prelude::*;

const TABLE: &str = include_str!("data/operations.tsv");

/// One route row of the table.
struct Row {
    line: usize,
    api: &'static str,
    operation: &'static str,
    method: Method,
    template: &'static str,
    versions: Vec<&'static str>,
}

fn api_of_service(service: &str) -> &'static str {
    match service {
        "Chat" => "chat",
        "SMS" => "sms",
        "Identity" => "identity",
        "CallAutomation" => "call_automation",
        "JobRouter" => "job_router",
        "NetworkTraversal" => "network_traversal",
        "Rooms" => "rooms",
        "Email" => "email",
        other => panic!("unknown service {other}"),
    }
}

/// Route rows (method not `-`).
fn rows() -> Vec<Row> {
    let mut lines = TABLE.lines().enumerate();
    let (_, header) = lines.next().unwrap();
    assert!(header.starts_with("service\toperation\tmethod\tpath_template\tapi_versions"));
    lines
        .filter_map(|(i, l)| {
            let f: Vec<&'static str> = l.split('\t').collect();
            (f[2] != "-").then(|| Row {
                line: i + 1,
                api: api_of_service(f[0]),
                operation: f[1],
                method: Method::from_bytes(f[2].as_bytes()).unwrap(),
                template: f[3],
                versions: f[4].split(',').collect(),
            })
        })
        .collect()
}

/// A realistic value for a template parameter, by name (and api for `{id}`).
fn value_for(api: &str, param: &str) -> &'static str {
    match (api, param) {
        (_, "chatThreadId") => "19:a1B2c3@thread.v2",
        (_, "chatMessageId") => "1613589626560",
        (_, "chatParticipantId" | "chatMemberId") => "8:acs:1b2c3d4e_0000-1111",
        ("identity" | "network_traversal", "id") => "8:acs:1b2c3d4e_0000-1111",
        (_, "participantRawId") => "4:+14255550123",
        (_, "participantMri") => "8:acs:1b2c3d4e_0000-1111",
        (_, "callConnectionId") => "421f0b00-1e6a-4b1f-8a7e-6d7a3a9c2f10",
        (_, "outgoingMessageId" | "operationId" | "messageId") => {
            "0a1b2c3d-4e5f-6789-abcd-ef0123456789"
        }
        (_, "roomId") => "99464139633917254",
        ("job_router", "id") => "job-42",
        (_, "jobId") => "job-42",
        (_, "assignmentId") => "assign-9",
        (_, "workerId") => "worker_3",
        (_, "offerId") => "offer.5",
        (_, "queueId") => "queue-7",
        (_, "classificationPolicyId" | "distributionPolicyId" | "exceptionPolicyId") => "policy-1",
        _ => panic!("no test value for {{{param}}} in api {api}"),
    }
}

fn fill(api: &str, template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').unwrap();
        out.push_str(value_for(api, &rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// `api/operation` of a classification, the body rule applied to `body`.
fn classify(c: &Catalogue, m: &Method, path: &str, query: Option<&str>, body: &[u8]) -> String {
    let cl = c.classify(m, path, query);
    let op = cl
        .body_rule
        .as_ref()
        .and_then(|r| r.apply(body))
        .unwrap_or(cl.operation);
    let op = c.operation(op);
    format!("{}/{}", c.api(op.api).name, op.name)
}

/// The Rooms participants PATCH: one route, told apart by body.
fn rooms_patch_case(row: &Row) -> Option<(&'static [u8], &'static str)> {
    (row.method == Method::PATCH && row.template == "/rooms/{roomId}/participants").then(|| {
        match row.operation {
            "RemoveParticipants" => (
                &br#"{"participants":{"8:acs:1b2c3d4e_0000-1111":null,"4:+14255550123":null}}"#[..],
                "RemoveParticipants",
            ),
            "UpdateParticipants" => (
                &br#"{"participants":{"8:acs:1b2c3d4e_0000-1111":{"role":"Presenter"}}}"#[..],
                "UpdateParticipants",
            ),
            // An add is a rawId mapped to a role, like an update: documented
            // in config/catalogue.toml, it folds into UpdateParticipants.
            "AddParticipants" => (
                &br#"{"participants":{"8:acs:new_0000-2222":{"role":"Attendee"}}}"#[..],
                "UpdateParticipants",
            ),
            other => panic!("unexpected rooms PATCH row {other}"),
        }
    })
}

#[test]
fn every_route_row_classifies_to_its_operation() {
    let c = Catalogue::builtin();
    let rows = rows();
    assert_eq!(rows.len(), 127, "route rows in the table");
    let mut checked = 0;
    for row in &rows {
        let path = fill(row.api, row.template);
        let (body, op): (&[u8], &str) = rooms_patch_case(row).unwrap_or((b"", row.operation));
        // `operation` is the second line of its [[route]]: 0-based index - 1 = 1-based header line.
        let want = format!("{}/{}", row.api, op);
        let doubled = path.replace('/', "//");
        let variants = [
            path.clone(),
            path.to_uppercase(),
            path.to_lowercase(),
            format!("{path}/"),
            doubled.clone(),
            format!("{doubled}//"),
        ];
        for version in &row.versions {
            let queries = [
                format!("api-version={version}"),
                format!("maxPageSize=5&api-version={version}&skip=%ZZ&&=&junk"),
                format!("api-version={version}&api-version=1999-01-01"),
            ];
            for p in &variants {
                for q in &queries {
                    let got = classify(&c, &row.method, p, Some(q), body);
                    assert_eq!(
                        got, want,
                        "operations.tsv:{}: {} {p}?{q}",
                        row.line, row.method
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 2000, "{checked}");
}

#[test]
fn delete_call_and_hang_up_are_told_apart_by_api_version() {
    let c = Catalogue::builtin();
    let m = Method::DELETE;
    let p = "/calling/callConnections/421f0b00-1e6a-4b1f-8a7e-6d7a3a9c2f10";
    let e = |q| classify(&c, &m, p, q, b"");
    assert_eq!(
        e(Some("api-version=2021-11-15-preview")),
        "call_automation/Delete Call"
    );
    assert_eq!(
        e(Some("api-version=2023-03-06")),
        "call_automation/HangUp Call"
    );
    assert_eq!(
        e(Some("x=api-version=2021-11-15-preview")),
        "call_automation/HangUp Call"
    );
    assert_eq!(e(Some("")), "call_automation/HangUp Call");
    assert_eq!(e(None), "call_automation/HangUp Call");
}

#[test]
fn rooms_patch_body_cases() {
    let c = Catalogue::builtin();
    let p = "/rooms/99464139633917254/participants";
    let q = Some("api-version=2024-04-15");
    let b = |body: &[u8]| classify(&c, &Method::PATCH, p, q, body);
    assert_eq!(
        b(br#"{"participants":{"a":null}}"#),
        "rooms/RemoveParticipants"
    );
    assert_eq!(
        b(br#"{"participants":{"a":null,"b":{"role":"Consumer"}}}"#),
        "rooms/UpdateParticipants"
    );
    assert_eq!(
        b(br#"{"participants":{"a":null"#),
        "rooms/UpdateParticipants"
    );
    assert_eq!(b(b""), "rooms/UpdateParticipants");
    // The older POST verbs need no body.
    assert_eq!(
        classify(&c, &Method::POST, "/rooms/1/participants:remove", q, b""),
        "rooms/RemoveParticipants"
    );
    assert_eq!(
        classify(&c, &Method::POST, "/room/1/participants/:update", q, b""),
        "rooms/UpdateParticipants"
    );
}

#[test]
fn catalogue_holds_exactly_the_tables_operations() {
    let c = Catalogue::builtin();
    let rows = rows();
    let mut want: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.api.to_owned(), r.operation.to_owned()))
        .collect();
    for api in c.apis() {
        want.insert((api.name.clone(), BAD_ROUTE.to_owned()));
    }
    let got: BTreeSet<(String, String)> = c
        .operations()
        .iter()
        .map(|o| (c.api(o.api).name.clone(), o.name.clone()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        got.len(),
        c.operations().len(),
        "one operation per (api, name)"
    );
    let apis: Vec<&str> = c.apis().iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        apis,
        [
            "chat",
            "sms",
            "identity",
            "call_automation",
            "job_router",
            "network_traversal",
            "rooms",
            "email",
            UNKNOWN_API
        ]
    );
    // The Rooms Add and Remove PATCH rows live in the Update route's body rule.
    assert_eq!(c.routes().len(), rows.len() - 2);
    // Routes are in file order, which is table order.
    let table_order: Vec<(String, &str)> = rows
        .iter()
        .filter(|r| {
            !(r.method == Method::PATCH
                && r.template == "/rooms/{roomId}/participants"
                && r.operation != "UpdateParticipants")
        })
        .map(|r| (r.method.to_string(), r.template))
        .collect();
    let route_order: Vec<(String, &str)> = c
        .routes()
        .iter()
        .map(|r| (r.method.to_string(), r.template.as_str()))
        .collect();
    assert_eq!(route_order, table_order);
}

#[test]
fn near_misses_are_bad_routes_of_the_right_api() {
    let c = Catalogue::builtin();
    let cases: &[(&str, &str, &str)] = &[
        ("GET", "/chat/threads/x/messages/y/z", "chat"),
        ("PUT", "/chat/threads", "chat"),
        ("GET", "/chat", "chat"),
        (
            "POST",
            "/chat/threads/19:a@thread.v2/participants/:bogus",
            "chat",
        ),
        (
            "GET",
            "/chat/threads/19:a@thread.v2/participants/:add",
            "chat",
        ),
        (
            "DELETE",
            "/chat/threads/19:a@thread.v2/participants/:remove",
            "chat",
        ),
        ("GET", "/chat/threads/19:a@thread.v2/images/x", "chat"),
        ("GET", "/chatty", "unknown"),
        ("GET", "/CHATTY/threads", "unknown"),
        ("GET", "/", "unknown"),
        ("GET", "", "unknown"),
        ("GET", "/unknown/thing", "unknown"),
        ("POST", "/sms/optouts:add", "sms"),
        ("POST", "/sms:send", "sms"),
        ("HEAD", "/sms", "sms"),
        ("POST", "/mms", "sms"),
        ("POST", "/deliveryReports/0a1b", "sms"),
        ("GET", "/identities/", "identity"),
        ("GET", "/identities/8:acs:x", "identity"),
        ("POST", "/identities/8:acs:x/:bogus", "identity"),
        ("POST", "/identities//:issueAccessToken", "identity"),
        (
            "PUT",
            "/access/teamsExtension/tenants/t1/assignments/o1",
            "identity",
        ),
        (
            "POST",
            "/calling/callConnections/abc:bogus",
            "call_automation",
        ),
        (
            "POST",
            "/calling/callConnections/:terminate",
            "call_automation",
        ),
        (
            "GET",
            "/calling/callConnections/:terminate",
            "call_automation",
        ),
        (
            "POST",
            "/calling/callConnections/abc%3Aterminate",
            "call_automation",
        ),
        (
            "POST",
            "/calling/callConnections/abc%3aterminate",
            "call_automation",
        ),
        ("POST", "/calling/callConnections:bogus", "call_automation"),
        (
            "POST",
            "/calling/callConnections/abc:terminate/extra",
            "call_automation",
        ),
        (
            "POST",
            "/calling/callConnections/abc:playx",
            "call_automation",
        ),
        ("POST", "/calling/recordings", "call_automation"),
        (
            "POST",
            "/calling/callConnections/abc/participants:mute",
            "call_automation",
        ),
        ("GET", "/routing/jobs/job-1/position", "job_router"),
        (
            "POST",
            "/routing/jobs/job-1/assignments/a1:unassign",
            "job_router",
        ),
        ("POST", "/routing/jobs/:cancel", "job_router"),
        ("PUT", "/routing/queues/q1", "job_router"),
        ("GET", "/turn/x", "network_traversal"),
        ("POST", "/networkTraversal/:issueRelay", "network_traversal"),
        ("DELETE", "/rooms", "rooms"),
        ("GET", "/room/r1", "rooms"),
        ("POST", "/rooms/r1/participants:bogus", "rooms"),
        ("POST", "/emails:bogus", "email"),
        ("GET", "/emailsx", "unknown"),
        ("GET", "/emails/", "email"),
        ("BREW", "/chat/threads", "chat"),
    ];
    for &(m, p, api) in cases {
        let m = Method::from_bytes(m.as_bytes()).unwrap();
        for q in [None, Some("api-version=2021-11-15-preview&x")] {
            assert_eq!(
                classify(&c, &m, p, q, b""),
                format!("{api}/{BAD_ROUTE}"),
                "{m} {p}"
            );
        }
    }
}

#[test]
fn ids_with_colons_and_verbs_resolve() {
    let c = Catalogue::builtin();
    let q = Some("api-version=2023-03-06");
    let cases: &[(&str, &str, &str)] = &[
        (
            "POST",
            "/calling/callConnections/a:b:terminate",
            "call_automation/Terminate Call",
        ),
        (
            "GET",
            "/calling/callConnections/abc:bogus",
            "call_automation/Get Call",
        ),
        (
            "GET",
            "/calling/callConnections/c1/participants/8:acs:x_y",
            "call_automation/Get Participant",
        ),
        (
            "POST",
            "/identities/8:acs:x/:issueAccessToken",
            "identity/CreateToken",
        ),
        ("DELETE", "/identities/8:acs:x", "identity/DeleteIdentity"),
        (
            "POST",
            "/chat/threads/19:x@thread.v2/participants/:add",
            "chat/AddChatThreadParticipants",
        ),
        (
            "DELETE",
            "/chat/threads/19:x@thread.v2/participants/8:acs:y",
            "chat/RemoveChatThreadParticipant",
        ),
        (
            "POST",
            "/routing/workers/w%3A1/offers/o:1:accept",
            "job_router/AcceptJobOffer",
        ),
        (
            "GET",
            "/chat/threads/19%3Ax%40thread.v2/readReceipts",
            "chat/GetReadReceipts",
        ),
        (
            "POST",
            "/NETWORKTRAVERSAL/:ISSUERELAYCONFIGURATION",
            "network_traversal/IssueRelayConfiguration",
        ),
        // Dot segments are not resolved (raw path): this is under /sms, unmatched.
        ("GET", "/sms/../chat/threads", "sms/Bad Route"),
    ];
    for &(m, p, want) in cases {
        let m = Method::from_bytes(m.as_bytes()).unwrap();
        assert_eq!(classify(&c, &m, p, q, b""), want, "{m} {p}");
    }
}

#[test]
fn malformed_file_error_names_file_and_line() {
    let dir = std::env::temp_dir().join(format!("acsgate-catalogue-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("malformed.toml");
    std::fs::write(
        &bad,
        "[[api]]\nname = \"phone\"\nprefixes = [\"/phone\"]\n\n[[route]]\napi = \"phone\"\noperation = \"Search\"\nmethod = POST\npath = \"/phone:search\"\n",
    )
    .unwrap();
    let e = Catalogue::load(true, std::slice::from_ref(&bad)).unwrap_err();
    assert_eq!(e.kind(), CatalogueErrorKind::Syntax);
    assert_eq!(e.file(), bad.display().to_string());
    assert_eq!(e.line(), Some(8), "{e}");
    assert!(
        e.to_string().starts_with(&format!("{}:8: ", bad.display())),
        "{e}"
    );

    let unknown_field = dir.join("unknown-field.toml");
    std::fs::write(
        &unknown_field,
        "[[route]]\napi = \"sms\"\noperation = \"OptOutAdd\"\nmethod = \"POST\"\npath = \"/sms/optouts:add\"\nverb = \"add\"\n",
    )
    .unwrap();
    let e = Catalogue::load(true, std::slice::from_ref(&unknown_field)).unwrap_err();
    assert_eq!(e.kind(), CatalogueErrorKind::Syntax);
    assert_eq!(e.line(), Some(6), "{e}");
    assert_eq!(e.route(), Some("POST /sms/optouts:add"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn conflicting_file_error_names_file_line_and_both_routes() {
    let extra = "# my overrides\n\n[[route]]\napi = \"call_automation\"\noperation = \"End Call\"\nmethod = \"DELETE\"\npath = \"/calling/callConnections/{id}\"\n";
    let e = Catalogue::from_texts([
        ("builtin:catalogue.toml", acsgate::catalogue::BUILTIN_TEXT),
        ("extra.toml", extra),
    ])
    .unwrap_err();
    assert_eq!(e.kind(), CatalogueErrorKind::Conflict);
    assert_eq!((e.file(), e.line()), ("extra.toml", Some(3)));
    let builtin_line = acsgate::catalogue::BUILTIN_TEXT
        .lines()
        .position(|l| l == "operation = \"HangUp Call\"")
        .unwrap();
    let text = e.to_string();
    // `operation` is the second line of its [[route]]: 0-based index - 1 = 1-based header line.
    let want = format!(
        "extra.toml:3: route DELETE /calling/callConnections/{{id}}: conflicts with route at builtin:catalogue.toml:{} (DELETE /calling/callConnections/{{callConnectionId}} is \"HangUp Call\")",
        builtin_line - 1
    );
    assert!(text.starts_with(&want), "{text}\nwant {want}");

    // An extra file that only adds is fine, and replacement mode drops the built-in.
    let add = "[[route]]\napi = \"sms\"\noperation = \"OptOutAdd\"\nmethod = \"POST\"\npath = \"/sms/optouts:add\"\n";
    let c = Catalogue::from_texts([("b", acsgate::catalogue::BUILTIN_TEXT), ("add.toml", add)])
        .unwrap();
    assert_eq!(
        classify(&c, &Method::POST, "/sms/optouts:add", None, b""),
        "sms/OptOutAdd"
    );
    let e = Catalogue::from_texts([("add.toml", add)]).unwrap_err();
    assert_eq!(e.kind(), CatalogueErrorKind::UnknownApi);
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("chat".to_owned()),
        Just("threads".to_owned()),
        Just("calling".to_owned()),
        Just("callConnections".to_owned()),
        Just("callConnections:answer".to_owned()),
        Just("participants".to_owned()),
        Just(":add".to_owned()),
        Just("identities".to_owned()),
        Just("routing".to_owned()),
        Just("jobs".to_owned()),
        Just("rooms".to_owned()),
        Just("19:a@thread.v2".to_owned()),
        Just("abc:terminate".to_owned()),
        Just("%3A".to_owned()),
        Just(String::new()),
        "[a-zA-Z0-9:%@+._~-]{0,12}",
        "\\PC{0,8}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(segment(), 0..10).prop_map(|s| format!("/{}", s.join("/"))),
        1 => "\\PC{0,64}",
        1 => "[/:%a-z{}*]{0,40}",
        1 => (segment(), 500usize..5000).prop_map(|(s, n)| format!("/{}", s.repeat(n.min(10_000 / (s.len() + 1))))),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PATCH),
        Just(Method::DELETE),
        Just(Method::PUT),
        "[A-Z]{1,12}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn classify_never_panics_and_names_a_known_operation(
        m in method(),
        p in path(),
        q in prop::option::of("[a-z=&%-]{0,30}|api-version=2021-11-15-preview"),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let c = catalogue();
        let cl = c.classify(&m, &p, q.as_deref());
        prop_assert!(cl.operation.index() < c.operations().len());
        let op = c.operation(cl.operation);
        prop_assert!(op.api.index() < c.apis().len());
        prop_assert!(c.find_operation(&c.api(op.api).name, &op.name) == Some(op.id));
        if let Some(rule) = &cl.body_rule {
            if let Some(other) = rule.apply(&body) {
                prop_assert!(other.index() < c.operations().len());
            }
        }
    }
}

fn catalogue() -> &'static Catalogue {
    static C: std::sync::OnceLock<Catalogue> = std::sync::OnceLock::new();
    C.get_or_init(Catalogue::builtin)
}

#[test]
fn load_reads_files_after_the_builtin() {
    let dir = std::env::temp_dir().join(format!("acsgate-catalogue-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("phone.toml");
    std::fs::write(
        &f,
        "[[api]]\nname = \"phone_numbers\"\nprefixes = [\"/availablePhoneNumbers\"]\n\n[[route]]\napi = \"phone_numbers\"\noperation = \"SearchAvailablePhoneNumbers\"\nmethod = \"POST\"\npath = \"/availablePhoneNumbers/countries/{countryCode}/:search\"\n",
    )
    .unwrap();
    let files = [f];
    let both = Catalogue::load(true, &files).unwrap();
    let only = Catalogue::load(false, &files).unwrap();
    let path = "/availablePhoneNumbers/countries/US/:search";
    for c in [&both, &only] {
        assert_eq!(
            classify(c, &Method::POST, path, None, b""),
            "phone_numbers/SearchAvailablePhoneNumbers"
        );
        assert_eq!(
            classify(c, &Method::GET, "/availablePhoneNumbers/x", None, b""),
            "phone_numbers/Bad Route"
        );
    }
    assert_eq!(
        classify(&both, &Method::POST, "/sms", None, b""),
        "sms/SMSMessageSent"
    );
    assert_eq!(
        classify(&only, &Method::POST, "/sms", None, b""),
        "unknown/Bad Route"
    );
    std::fs::remove_dir_all(&dir).ok();
}
