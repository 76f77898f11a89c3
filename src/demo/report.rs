//! The per-operation table, built from scraped samples: counts by status class from
//! `acsgate_requests_total`, p50/p99 from the `acsgate_request_duration_seconds` buckets.

use std::collections::BTreeMap;

use super::scrape::Sample;

const REQUESTS: &str = "acsgate_requests_total";
const DURATION_BUCKET: &str = "acsgate_request_duration_seconds_bucket";

/// One row of the table: an (api, operation) pair.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    /// Requests of any status.
    pub count: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 4xx answers.
    pub client_errors: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Cumulative duration buckets: upper bound (seconds) → count, summed over status classes.
    pub buckets: Vec<(f64, f64)>,
}

impl Row {
    fn add(&mut self, other: &Row) {
        self.count += other.count;
        self.ok += other.ok;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        for &(le, count) in &other.buckets {
            add_bucket(&mut self.buckets, le, count);
        }
    }
}

fn add_bucket(buckets: &mut Vec<(f64, f64)>, le: f64, count: f64) {
    match buckets.iter_mut().find(|(upper, _)| *upper == le) {
        Some((_, total)) => *total += count,
        None => {
            buckets.push((le, count));
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
}

/// The table: rows keyed by (api, operation), hence sorted by api then operation.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The rows.
    pub rows: BTreeMap<(String, String), Row>,
}

impl Report {
    /// Builds the table from the gateway's samples; other metrics are ignored.
    pub fn from_samples(samples: &[Sample]) -> Report {
        let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
        for sample in samples {
            let key = || {
                (
                    sample.label("api").to_owned(),
                    sample.label("operation").to_owned(),
                )
            };
            if sample.name == REQUESTS {
                // Counters are integers; a negative or fractional value would be a broken scrape.
                let count = sample.value.max(0.0) as u64;
                let row = rows.entry(key()).or_default();
                row.count += count;
                match sample.label("status_code").as_bytes().first() {
                    Some(b'2') => row.ok += count,
                    Some(b'4') => row.client_errors += count,
                    Some(b'5') => row.server_errors += count,
                    _ => {}
                }
            } else if sample.name == DURATION_BUCKET {
                let le = match sample.label("le") {
                    "+Inf" => f64::INFINITY,
                    other => match other.parse() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                };
                add_bucket(
                    &mut rows.entry(key()).or_default().buckets,
                    le,
                    sample.value,
                );
            }
        }
        Report { rows }
    }

    /// Every row summed.
    pub fn total(&self) -> Row {
        let mut total = Row::default();
        for row in self.rows.values() {
            total.add(row);
        }
        total
    }

    /// The table as aligned text, with a header and a `TOTAL` line.
    pub fn render(&self) -> String {
        let header = [
            "API",
            "OPERATION",
            "COUNT",
            "2XX",
            "4XX",
            "5XX",
            "P50 MS",
            "P99 MS",
        ]
        .map(String::from);
        let cells = |api: &str, operation: &str, row: &Row| {
            [
                api.to_owned(),
                operation.to_owned(),
                row.count.to_string(),
                row.ok.to_string(),
                row.client_errors.to_string(),
                row.server_errors.to_string(),
                millis(histogram_quantile(0.5, &row.buckets)),
                millis(histogram_quantile(0.99, &row.buckets)),
            ]
        };
        let mut lines: Vec<[String; 8]> = vec![header];
        lines.extend(
            self.rows
                .iter()
                .map(|((api, operation), row)| cells(api, operation, row)),
        );
        lines.push(cells("TOTAL", "", &self.total()));

        let mut widths = [0usize; 8];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for (index, line) in lines.iter().enumerate() {
            if index + 1 == lines.len() {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                out.push_str(&rule.join("  "));
                out.push('\n');
            }
            let text: Vec<String> = line
                .iter()
                .zip(widths)
                .enumerate()
                // Names left-aligned, numbers right-aligned.
                .map(|(column, (cell, width))| {
                    if column < 2 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            out.push_str(text.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

fn millis(seconds: f64) -> String {
    if seconds.is_nan() {
        "-".into()
    } else if seconds.is_infinite() {
        "inf".into()
    } else {
        format!("{:.1}", seconds * 1000.0)
    }
}

/// The `q`-quantile of a cumulative histogram, as PromQL's `histogram_quantile`: find the
/// bucket holding rank `q * total` and interpolate linearly inside it (from 0 for the first
/// bucket). A rank in the `+Inf` bucket answers the highest finite bound. `NaN` when there
/// are no observations or no `+Inf` bucket.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let mut buckets: Vec<(f64, f64)> = buckets.to_vec();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(last_bound, total)) = buckets.last() else {
        return f64::NAN;
    };
    if buckets.len() < 2 || last_bound != f64::INFINITY || total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let Some(b) = buckets.iter().position(|&(_, count)| count >= rank) else {
        return f64::NAN;
    };
    if b == buckets.len() - 1 {
        return buckets[b - 1].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (start, below) = if b == 0 {
        (0.0, 0.0)
    } else {
        (buckets[b - 1].0, buckets[b - 1].1)
    };
    let (end, count) = buckets[b];
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return end;
    }
    start + (end - start) * ((rank - below) / in_bucket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::scrape::parse;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn quantile_interpolates_within_the_bucket() {
        // 10 observations: 2 ≤ 0.1 s, 8 in (0.1, 0.5], none above.
        let buckets = [(0.1, 2.0), (0.5, 10.0), (INF, 10.0)];
        // rank 5 is the 3rd of 8 in (0.1, 0.5]: 0.1 + 0.4 * 3/8.
        assert!((histogram_quantile(0.5, &buckets) - 0.25).abs() < 1e-12);
        // rank 1 is half-way through the first bucket, which starts at 0.
        assert!((histogram_quantile(0.1, &buckets) - 0.05).abs() < 1e-12);
        // rank 9.9: 0.1 + 0.4 * 7.9/8.
        assert!((histogram_quantile(0.99, &buckets) - 0.495).abs() < 1e-12);
        assert_eq!(histogram_quantile(1.0, &buckets), 0.5);
    }

    #[test]
    fn quantile_edge_cases_match_promql() {
        // Rank in the +Inf bucket: the highest finite bound.
        assert_eq!(
            histogram_quantile(0.99, &[(0.1, 1.0), (1.0, 2.0), (INF, 10.0)]),
            1.0
        );
        // No observations, no +Inf bucket, a single bucket: no answer.
        assert!(histogram_quantile(0.5, &[(0.1, 0.0), (INF, 0.0)]).is_nan());
        assert!(histogram_quantile(0.5, &[(0.1, 1.0), (1.0, 2.0)]).is_nan());
        assert!(histogram_quantile(0.5, &[(INF, 3.0)]).is_nan());
        assert!(histogram_quantile(0.5, &[]).is_nan());
        assert_eq!(
            histogram_quantile(-0.1, &[(0.1, 1.0), (INF, 1.0)]),
            f64::NEG_INFINITY
        );
        assert_eq!(histogram_quantile(1.1, &[(0.1, 1.0), (INF, 1.0)]), INF);
        // Order of the input does not matter.
        let shuffled = [(INF, 10.0), (0.5, 10.0), (0.1, 2.0)];
        assert!((histogram_quantile(0.5, &shuffled) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn report_sums_status_classes_and_sorts_rows() {
        let text = r#"
acsgate_requests_total{api="chat",operation="SendChatMessage",status_code="201",status_subclass="2xx"} 8
acsgate_requests_total{api="chat",operation="SendChatMessage",status_code="429",status_subclass="4xx"} 1
acsgate_requests_total{api="chat",operation="SendChatMessage",status_code="503",status_subclass="5xx"} 1
acsgate_requests_total{api="call_automation",operation="Create Call",status_code="201",status_subclass="2xx"} 2
acsgate_request_duration_seconds_bucket{api="chat",operation="SendChatMessage",status_subclass="2xx",le="0.1"} 2
acsgate_request_duration_seconds_bucket{api="chat",operation="SendChatMessage",status_subclass="2xx",le="0.5"} 8
acsgate_request_duration_seconds_bucket{api="chat",operation="SendChatMessage",status_subclass="2xx",le="+Inf"} 8
acsgate_request_duration_seconds_bucket{api="chat",operation="SendChatMessage",status_subclass="5xx",le="0.1"} 0
acsgate_request_duration_seconds_bucket{api="chat",operation="SendChatMessage",status_subclass="5xx",le="0.5"} 2
acsgate_request_duration_seconds_bucket{api="chat",operation="SendChatMessage",status_subclass="5xx",le="+Inf"} 2
acsgate_upstream_errors_total{api="chat",operation="SendChatMessage",kind="timeout"} 5
"#;
        let report = Report::from_samples(&parse(text).unwrap());
        let keys: Vec<_> = report.rows.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                ("call_automation".to_owned(), "Create Call".to_owned()),
                ("chat".to_owned(), "SendChatMessage".to_owned())
            ]
        );
        let chat = &report.rows[&("chat".to_owned(), "SendChatMessage".to_owned())];
        assert_eq!(
            (chat.count, chat.ok, chat.client_errors, chat.server_errors),
            (10, 8, 1, 1)
        );
        // 2xx and 5xx buckets are summed before the quantile: (0.1, 2), (0.5, 10), (+Inf, 10).
        assert_eq!(chat.buckets, vec![(0.1, 2.0), (0.5, 10.0), (INF, 10.0)]);
        let total = report.total();
        assert_eq!(total.count, 12);
        assert_eq!(total.ok, 10);

        let table = report.render();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("API"), "{table}");
        assert!(
            lines[1].starts_with("call_automation  Create Call"),
            "{table}"
        );
        assert!(
            lines[2].contains("SendChatMessage") && lines[2].contains("250.0"),
            "{table}"
        );
        let last: Vec<&str> = lines[lines.len() - 1].split_whitespace().collect();
        assert_eq!(last[..5], ["TOTAL", "12", "10", "1", "1"], "{table}");
    }
}
