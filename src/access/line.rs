//! Rendering one access log line, as a JSON object or as logfmt, from one list of fields.
//!
//! Strings from the request (correlation ids, the raw path) go through [`serde_json`]'s escaper
//! or [`push_logfmt`], so no value can break a line or forge a field.

use std::fmt::{Display, Write as _};

/// A field value.
pub(super) enum Value<'a> {
    /// Any string; escaped as needed.
    Str(&'a str),
    /// A number, written bare.
    Num(&'a dyn Display),
    /// Text our own types produce (a timestamp, a socket address): never needs escaping.
    Plain(&'a dyn Display),
    /// No value: `null` in JSON, left out of logfmt.
    Absent,
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(value: Option<&'a str>) -> Self {
        value.map_or(Value::Absent, Value::Str)
    }
}

/// One JSON object, keys in the given order, and a newline.
pub(super) fn json(fields: &[(&str, Value<'_>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.push(b'{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, key);
        out.push(b':');
        match value {
            Value::Str(s) => push_json_str(&mut out, s),
            Value::Num(n) => push_display(&mut out, n),
            Value::Plain(p) => {
                out.push(b'"');
                push_display(&mut out, p);
                out.push(b'"');
            }
            Value::Absent => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"}\n");
    out
}

/// One logfmt line (`key=value key="quoted value"`), absent fields left out, and a newline.
pub(super) fn logfmt(fields: &[(&str, Value<'_>)]) -> Vec<u8> {
    let mut line = String::with_capacity(512);
    for (key, value) in fields {
        let start = line.len();
        line.push_str(key);
        line.push('=');
        match value {
            Value::Str(s) => push_logfmt(&mut line, s),
            Value::Num(d) | Value::Plain(d) => {
                let _ = write!(line, "{d}");
            }
            Value::Absent => {
                line.truncate(start);
                continue;
            }
        }
        line.push(' ');
    }
    line.pop();
    line.push('\n');
    line.into_bytes()
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_display(out: &mut Vec<u8>, value: &dyn Display) {
    let _ = std::io::Write::write_fmt(out, format_args!("{value}"));
}

/// Appends `value` as a logfmt value: bare when it is a non-empty run of printable characters
/// without space, `=` or `"`; else quoted, with `\` `"` and control characters escaped.
pub(super) fn push_logfmt(out: &mut String, value: &str) {
    let bare = !value.is_empty()
        && !value
            .chars()
            .any(|c| c <= ' ' || c == '=' || c == '"' || c == '\\' || c.is_control());
    if bare {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logfmt_value(value: &str) -> String {
        let mut out = String::new();
        push_logfmt(&mut out, value);
        out
    }

    #[test]
    fn logfmt_quotes_only_what_needs_it() {
        assert_eq!(logfmt_value("SendChatMessage"), "SendChatMessage");
        assert_eq!(logfmt_value("/chat/threads/{id}"), "/chat/threads/{id}");
        assert_eq!(logfmt_value("Bad Route"), "\"Bad Route\"");
        assert_eq!(logfmt_value(""), "\"\"");
        assert_eq!(logfmt_value("a=b"), "\"a=b\"");
        assert_eq!(logfmt_value(r#"say "hi"\"#), r#""say \"hi\"\\""#);
        assert_eq!(logfmt_value("x\ny\r\tz\u{7}"), "\"x\\ny\\r\\tz\\u0007\"");
        assert_eq!(logfmt_value("été"), "été");
    }

    #[test]
    fn a_forged_field_stays_inside_its_value() {
        let forged = "id\" status=200 x=\"";
        let line = String::from_utf8(logfmt(&[
            ("client_request_id", Value::Str(forged)),
            ("status", Value::Num(&502)),
        ]))
        .unwrap();
        assert_eq!(
            line,
            "client_request_id=\"id\\\" status=200 x=\\\"\" status=502\n"
        );
        let json = json(&[
            ("client_request_id", Value::Str("a\"}\n{\"status\":200")),
            ("status", Value::Num(&502)),
        ]);
        assert_eq!(json.iter().filter(|b| **b == b'\n').count(), 1);
        let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed["client_request_id"], "a\"}\n{\"status\":200");
        assert_eq!(parsed["status"], 502);
    }

    #[test]
    fn both_formats_render_every_kind_of_value() {
        let addr: std::net::SocketAddr = "[::1]:4000".parse().unwrap();
        let fields = [
            ("operation", Value::Str("Bad Route")),
            ("duration_ms", Value::Num(&1.5)),
            ("client", Value::Plain(&addr)),
            ("error", Value::Absent),
            ("api", Value::Str("sms")),
        ];
        let parsed: serde_json::Value = serde_json::from_slice(&json(&fields)).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "operation": "Bad Route", "duration_ms": 1.5, "client": "[::1]:4000",
                "error": null, "api": "sms"
            })
        );
        assert_eq!(
            String::from_utf8(logfmt(&fields)).unwrap(),
            "operation=\"Bad Route\" duration_ms=1.5 client=[::1]:4000 api=sms\n"
        );
    }
}
