//! A small parser of the Prometheus text exposition format (0.0.4), enough to read back the
//! gateway's own `/metrics`: `# HELP`/`# TYPE`/comment lines are skipped, every sample line
//! becomes a [`Sample`]. Histograms come out as their `_bucket`, `_sum` and `_count` samples.

use std::collections::BTreeMap;
use std::fmt;

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `acsgate_request_duration_seconds_bucket`.
    pub name: String,
    /// Labels, with escapes resolved.
    pub labels: BTreeMap<String, String>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or `""` when absent (as PromQL treats a missing label).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// A line that is not valid text format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metrics line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a whole exposition. Fails on the first malformed line.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        // HELP, TYPE and plain comments carry nothing the demo needs.
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(|message| ParseError {
            line: index + 1,
            message,
        })?;
        samples.push(sample);
    }
    Ok(samples)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut cursor = Cursor { rest: line };
    let name = cursor.take_name(true).ok_or("expected a metric name")?;
    let mut labels = BTreeMap::new();
    let mut blank = cursor.skip_blanks();
    if cursor.eat('{') {
        loop {
            cursor.skip_blanks();
            if cursor.eat('}') {
                break;
            }
            let label = cursor
                .take_name(false)
                .ok_or_else(|| format!("expected a label name in `{line}`"))?;
            cursor.skip_blanks();
            if !cursor.eat('=') {
                return Err(format!("expected `=` after label `{label}`"));
            }
            cursor.skip_blanks();
            let value = cursor.take_quoted()?;
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label `{label}` appears twice"));
            }
            cursor.skip_blanks();
            // A trailing comma before `}` is allowed by the format.
            if cursor.eat(',') {
                continue;
            }
            if cursor.eat('}') {
                break;
            }
            return Err(format!("expected `,` or `}}` after label `{label}`"));
        }
        blank = cursor.skip_blanks();
    }
    if cursor.rest.trim_matches([' ', '\t']).is_empty() {
        return Err("missing value".into());
    }
    if !blank {
        return Err("expected a blank before the value".into());
    }
    let mut fields = cursor.rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value_text = fields.next().ok_or("missing value")?;
    let value = parse_value(value_text).ok_or_else(|| format!("bad value `{value_text}`"))?;
    if let Some(timestamp) = fields.next()
        && timestamp.parse::<i64>().is_err()
    {
        return Err(format!("bad timestamp `{timestamp}`"));
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected `{extra}` after the value"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Go's `ParseFloat` spellings of the specials, then Rust's float syntax.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')) =>
        {
            text.parse().ok()
        }
        _ => None,
    }
}

struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    /// Skips spaces and tabs; says whether there were any.
    fn skip_blanks(&mut self) -> bool {
        let before = self.rest.len();
        self.rest = self.rest.trim_start_matches([' ', '\t']);
        self.rest.len() != before
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*` for metric names; label names may not contain `:`.
    fn take_name(&mut self, colons: bool) -> Option<&'a str> {
        let ok = |i: usize, c: char| {
            c.is_ascii_alphabetic()
                || c == '_'
                || (colons && c == ':')
                || (i > 0 && c.is_ascii_digit())
        };
        let end = self
            .rest
            .char_indices()
            .find(|&(i, c)| !ok(i, c))
            .map_or(self.rest.len(), |(i, _)| i);
        if end == 0 {
            return None;
        }
        let (name, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(name)
    }

    /// A double-quoted label value with `\\`, `\"` and `\n` escapes.
    fn take_quoted(&mut self) -> Result<String, String> {
        if !self.eat('"') {
            return Err("expected `\"` to open a label value".into());
        }
        let mut value = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => return Err(format!("unknown escape `\\{other}`")),
                    None => break,
                },
                _ => value.push(c),
            }
        }
        Err("unterminated label value".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn counters_with_labels_and_comments() {
        let text = "# HELP acsgate_requests_total Requests proxied.\n\
                    # TYPE acsgate_requests_total counter\n\
                    # just a comment\n\
                    \n\
                    acsgate_requests_total{api=\"chat\",operation=\"SendChatMessage\",status_code=\"201\"} 12\n\
                    up 1 1700000000000\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].name, "acsgate_requests_total");
        assert_eq!(
            samples[0].labels,
            labels(&[
                ("api", "chat"),
                ("operation", "SendChatMessage"),
                ("status_code", "201")
            ])
        );
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[1].name, "up");
        assert!(samples[1].labels.is_empty());
        assert_eq!(samples[1].value, 1.0);
    }

    #[test]
    fn escaped_label_values() {
        let text = r#"m{a="say \"hi\"",b="back\\slash",c="two\nlines",d="{,}= "} 1"#;
        let sample = &parse(text).unwrap()[0];
        assert_eq!(sample.label("a"), "say \"hi\"");
        assert_eq!(sample.label("b"), "back\\slash");
        assert_eq!(sample.label("c"), "two\nlines");
        assert_eq!(sample.label("d"), "{,}= ");
        assert_eq!(sample.label("missing"), "");
    }

    #[test]
    fn histogram_lines_and_special_values() {
        let text = "# TYPE d histogram\n\
                    d_bucket{op=\"Create Call\",le=\"0.005\"} 0\n\
                    d_bucket{op=\"Create Call\",le=\"+Inf\"} 7\n\
                    d_sum{op=\"Create Call\"} 1.5e-1\n\
                    d_count{op=\"Create Call\"} 7\n\
                    g -Inf\n\
                    h NaN\n\
                    i{a=\"x\",} 2\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 7);
        assert_eq!(samples[0].label("le"), "0.005");
        assert_eq!(samples[1].label("le"), "+Inf");
        assert_eq!(samples[1].label("op"), "Create Call");
        assert_eq!(samples[2].value, 0.15);
        assert_eq!(samples[4].value, f64::NEG_INFINITY);
        assert!(samples[5].value.is_nan());
        assert_eq!(samples[6].label("a"), "x");
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line_number() {
        for (bad, needle) in [
            ("m", "missing value"),
            ("m{a=\"x\"}", "missing value"),
            ("m{a=\"x\"}1", "blank"),
            ("m{a=\"x} 1", "unterminated"),
            ("m{a=\"\\t\"} 1", "escape"),
            ("m{a=x} 1", "open a label value"),
            ("m{a=\"x\" b=\"y\"} 1", "`,` or `}`"),
            ("m{a=\"x\",a=\"y\"} 1", "twice"),
            ("m{1a=\"x\"} 1", "label name"),
            ("9m 1", "metric name"),
            ("m one", "bad value"),
            ("m 1 soon", "bad timestamp"),
            ("m 1 2 3", "unexpected"),
        ] {
            let err = parse(&format!("# ok\nok 1\n{bad}\n")).unwrap_err();
            assert_eq!(err.line, 3, "{bad}: {err}");
            assert!(err.message.contains(needle), "{bad}: {err}");
        }
    }

    /// Whatever the prometheus crate writes, including hostile label values, reads back.
    #[test]
    fn round_trips_the_prometheus_encoder() {
        use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
        let registry = Registry::new();
        let counter =
            IntCounterVec::new(Opts::new("c_total", "help with \\ and\nnewline"), &["v"]).unwrap();
        let histogram =
            HistogramVec::new(HistogramOpts::new("h", "h").buckets(vec![0.1, 1.0]), &["v"])
                .unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        registry.register(Box::new(histogram.clone())).unwrap();
        let hostile = "quote \" backslash \\ newline \n end";
        counter.with_label_values(&[hostile]).inc_by(3);
        histogram.with_label_values(&[hostile]).observe(0.5);
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let samples = parse(std::str::from_utf8(&text).unwrap()).unwrap();
        let find = |name: &str, le: &str| {
            samples
                .iter()
                .find(|s| s.name == name && s.label("le") == le)
                .unwrap_or_else(|| panic!("{name} {le} missing"))
        };
        assert_eq!(find("c_total", "").label("v"), hostile);
        assert_eq!(find("c_total", "").value, 3.0);
        assert_eq!(find("h_bucket", "0.1").value, 0.0);
        assert_eq!(find("h_bucket", "1").value, 1.0);
        assert_eq!(find("h_bucket", "+Inf").value, 1.0);
        assert_eq!(find("h_count", "").value, 1.0);
    }
}
