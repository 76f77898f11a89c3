//! The Prometheus text format (0.0.4), written straight from gathered families.
//!
//! It writes the same bytes as `prometheus::TextEncoder` (a test holds it to that) at a
//! fraction of the cost on a full operation table, where the histogram lines dominate: the
//! label block of a series is rendered once and reused for each of its bucket lines, bucket
//! bounds are rendered once per family, integers skip float formatting, and no line allocates.
//! Non-finite values are written as the format spells them (`+Inf`, `-Inf`, `NaN`).

use std::io::Write;

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

/// Appends `families` to `out` in the text format.
pub(crate) fn encode(families: &[MetricFamily], out: &mut Vec<u8>) -> prometheus::Result<()> {
    let mut labels = Vec::with_capacity(256);
    let mut bounds: Vec<(f64, String)> = Vec::new();
    for family in families {
        let kind = match family.get_field_type() {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            // Not used by the gateway; the crate's encoder knows them.
            MetricType::SUMMARY | MetricType::UNTYPED => {
                TextEncoder::new().encode(std::slice::from_ref(family), out)?;
                continue;
            }
        };
        let name = family.name();
        if !family.help().is_empty() {
            out.extend_from_slice(b"# HELP ");
            out.extend_from_slice(name.as_bytes());
            out.push(b' ');
            escape(family.help(), false, out);
            out.push(b'\n');
        }
        out.extend_from_slice(b"# TYPE ");
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
        out.extend_from_slice(kind.as_bytes());
        out.push(b'\n');
        for metric in family.get_metric() {
            label_block(metric.get_label(), &mut labels);
            let line = Line {
                name,
                labels: &labels,
                timestamp: metric.timestamp_ms(),
            };
            match family.get_field_type() {
                MetricType::COUNTER => line.write(
                    "",
                    None,
                    Value::Float(metric.get_counter().get_value()),
                    out,
                ),
                MetricType::GAUGE => {
                    line.write("", None, Value::Float(metric.get_gauge().get_value()), out)
                }
                _ => histogram(&line, metric, &mut bounds, out),
            }
        }
    }
    Ok(())
}

fn histogram(line: &Line<'_>, metric: &Metric, bounds: &mut Vec<(f64, String)>, out: &mut Vec<u8>) {
    let histogram = metric.get_histogram();
    let mut inf_seen = false;
    for (i, bucket) in histogram.get_bucket().iter().enumerate() {
        let bound = bucket.upper_bound();
        // Every series of a family has the same bounds: render them once.
        if bounds
            .get(i)
            .is_none_or(|(cached, _)| cached.to_bits() != bound.to_bits())
        {
            bounds.truncate(i);
            bounds.push((bound, bound.to_string()));
        }
        let le = bounds[i].1.as_str();
        line.write(
            "_bucket",
            Some(le),
            Value::Int(bucket.cumulative_count()),
            out,
        );
        inf_seen |= bound == f64::INFINITY;
    }
    let count = histogram.get_sample_count();
    if !inf_seen {
        line.write("_bucket", Some("+Inf"), Value::Int(count), out);
    }
    line.write("_sum", None, Value::Float(histogram.get_sample_sum()), out);
    line.write("_count", None, Value::Int(count), out);
}

/// Renders `{name="value",…` (without the closing brace) into `block`; empty for no labels.
fn label_block(pairs: &[LabelPair], block: &mut Vec<u8>) {
    block.clear();
    for (i, pair) in pairs.iter().enumerate() {
        block.push(if i == 0 { b'{' } else { b',' });
        block.extend_from_slice(pair.name().as_bytes());
        block.extend_from_slice(b"=\"");
        escape(pair.value(), true, block);
        block.push(b'"');
    }
}

/// The text format's escapes: backslash and newline, and in label values the double quote.
fn escape(text: &str, quote: bool, out: &mut Vec<u8>) {
    for byte in text.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quote => out.extend_from_slice(b"\\\""),
            _ => out.push(byte),
        }
    }
}

enum Value {
    Int(u64),
    Float(f64),
}

/// One series: its name, rendered labels and timestamp.
struct Line<'a> {
    name: &'a str,
    labels: &'a [u8],
    timestamp: i64,
}

impl Line<'_> {
    fn write(&self, suffix: &str, le: Option<&str>, value: Value, out: &mut Vec<u8>) {
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(suffix.as_bytes());
        match le {
            Some(le) => {
                out.extend_from_slice(self.labels);
                out.extend_from_slice(if self.labels.is_empty() {
                    b"{le=\""
                } else {
                    b",le=\""
                });
                out.extend_from_slice(le.as_bytes());
                out.extend_from_slice(b"\"}");
            }
            None if !self.labels.is_empty() => {
                out.extend_from_slice(self.labels);
                out.push(b'}');
            }
            None => {}
        }
        out.push(b' ');
        let mut digits = itoa::Buffer::new();
        match value {
            Value::Int(n) => out.extend_from_slice(digits.format(n).as_bytes()),
            Value::Float(v) => write_float(v, out),
        }
        if self.timestamp != 0 {
            out.push(b' ');
            out.extend_from_slice(digits.format(self.timestamp).as_bytes());
        }
        out.push(b'\n');
    }
}

/// `f64` as Rust's `Display` writes it (what the crate's encoder does), integers the fast way.
fn write_float(value: f64, out: &mut Vec<u8>) {
    const EXACT: f64 = 1e15;
    if value.fract() == 0.0 && value.abs() < EXACT && !(value == 0.0 && value.is_sign_negative()) {
        out.extend_from_slice(itoa::Buffer::new().format(value as i64).as_bytes());
    } else if value.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 { b"+Inf" } else { b"-Inf" });
    } else {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Catalogue;
    use crate::error::ErrorKind;
    use crate::metrics::{DEFAULT_BUCKETS, Metrics};
    use http::StatusCode;
    use std::time::Duration;

    /// Every operation with several statuses, errors, odd label values and the process
    /// collector: byte for byte what the crate's encoder writes.
    #[test]
    fn same_bytes_as_the_crate_encoder() {
        let catalogue = Catalogue::builtin();
        let metrics = Metrics::new(DEFAULT_BUCKETS.to_vec()).unwrap();
        let table = metrics.bind(&catalogue);
        for (i, op) in catalogue.operations().iter().enumerate() {
            for code in [200, 404, 500, 599] {
                let elapsed = Duration::from_micros(137 * (i as u64 + 1) * u64::from(code));
                let error = (code == 500).then_some(ErrorKind::Reset);
                table
                    .get(op.id)
                    .record(StatusCode::from_u16(code).unwrap(), elapsed, error);
            }
        }
        let odd = metrics.bind_named("we\"ird\\api", "line\nbreak");
        odd.record(StatusCode::OK, Duration::from_nanos(1), None);
        let families = metrics.registry().gather();
        let mut ours = Vec::new();
        encode(&families, &mut ours).unwrap();
        let mut theirs = Vec::new();
        TextEncoder::new().encode(&families, &mut theirs).unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(theirs).unwrap()
        );
    }

    #[test]
    fn floats() {
        let render = |v: f64| {
            let mut out = Vec::new();
            write_float(v, &mut out);
            String::from_utf8(out).unwrap()
        };
        for v in [0.0, 1.0, -3.0, 0.005, 1e-7, 2.5e20, 123456.789, 1e15, -0.0] {
            assert_eq!(render(v), v.to_string(), "{v}");
        }
        assert_eq!(render(f64::INFINITY), "+Inf");
        assert_eq!(render(f64::NEG_INFINITY), "-Inf");
        assert_eq!(render(f64::NAN), "NaN");
    }
}
