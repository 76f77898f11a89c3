//! A duration histogram family of our own, for `acsgate_request_duration_seconds`.
//!
//! It exists because every proxied request observes one, and the prometheus crate's
//! `Histogram::observe` does five atomic read-modify-writes for it (the hot/cold shard
//! count, the bucket, a compare-and-swap loop on the `f64` sum, the shard's count), so
//! that a scrape can take a snapshot in which `_count` and `_sum` agree exactly. This one
//! does two: a `fetch_add` on the bucket the observation falls in and one on the sum,
//! kept in integer nanoseconds. The count is not kept at all: a scrape adds up the
//! buckets, `+Inf` included. In the `classify + record` bench (callgrind, instructions per
//! call, a 1.5 ms observation) `OperationMetrics::record` went from 111 to 100, of which
//! the observation from 37 (`Histogram::observe`) to 26; the atomic read-modify-writes,
//! which cost far more cycles than their instruction count says, from five to two.
//!
//! # What a concurrent scrape sees
//!
//! Every counter is read once, with relaxed loads, while observations go on. So:
//!
//! - Within one scrape, the buckets are cumulative and `+Inf` equals `_count`, always:
//!   both are computed from the same reading of each bucket.
//! - Across scrapes, every bucket, `_count` and `_sum` only grow: each is a sum of
//!   monotonic counters.
//! - `_sum` and `_count` may disagree by the observations in flight during the scrape (a
//!   bucket already counted, its duration not yet added, or the reverse): at most one
//!   observation per thread recording at that instant, which the next scrape includes.
//!
//! The last is what the crate's shard dance prevents, at three extra atomic operations on
//! every request and a lock and a spin on every scrape. It is acceptable: queries use
//! `rate()`/`increase()` over windows of many scrapes, where an observation counted in
//! the bucket at one edge and in the sum at the other shifts a window's mean by one
//! request's share, and a scrape is not a snapshot across series anyway (the counters and
//! the other histograms of the same scrape are read at different instants).
//!
//! The sum wraps after 2⁶⁴ ns (584 years) of summed latency in one series, which
//! `rate()` reads as a counter reset; at a thousand requests always in flight in one
//! series that is seven months.
//!
//! # Bucket placement
//!
//! As Prometheus: an observation goes in the first bucket whose `le` it does not exceed,
//! comparing `Duration::as_secs_f64()` with the bound, exactly as the crate did. Each bound
//! is converted once, at creation, to the least whole number of nanoseconds that exceeds
//! it, so placing an observation compares integers. The scan is linear, from the fastest
//! bucket, where most requests land: with the 17 default buckets `record` costs 100
//! instructions for an observation in the first bucket and 149 in the eighth (300 ms),
//! where a binary search (`partition_point`) costs 165 wherever the observation lands.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

/// A histogram family of durations, by label values: what `prometheus::HistogramVec` was,
/// with a cheaper [`DurationHistogram::observe`] and the same exposition.
#[derive(Clone)]
pub(crate) struct DurationHistogramVec {
    family: Arc<Family>,
}

struct Family {
    desc: Desc,
    /// The bucket bounds in seconds, strictly increasing, `+Inf` left implicit.
    bounds: Box<[f64]>,
    /// Each bound's [`nanos_over`], which every child copies beside its counts.
    limits: Box<[u64]>,
    /// The children, by label values in the order of `desc.variable_labels`.
    children: RwLock<HashMap<Box<[String]>, DurationHistogram>>,
}

/// One series of a [`DurationHistogramVec`]: a cheap handle to share.
#[derive(Clone)]
pub(crate) struct DurationHistogram {
    core: Arc<Core>,
}

struct Core {
    /// One per finite bound, in order.
    buckets: Box<[Bucket]>,
    /// Observations over the last bound.
    inf: AtomicU64,
    /// The sum of every observation, in nanoseconds.
    sum_nanos: AtomicU64,
    /// The series' labels as the exposition lists them (sorted by name).
    labels: Vec<LabelPair>,
}

/// A finite bucket: its bound in nanoseconds and its own (not cumulative) count.
struct Bucket {
    /// The least number of nanoseconds over the bound: this bucket takes what is less.
    limit: u64,
    count: AtomicU64,
}

impl DurationHistogramVec {
    /// A family `name` with `help`, the given label names and bucket bounds in seconds
    /// (strictly increasing; a trailing `+Inf` is implicit and dropped; none means the
    /// prometheus crate's default buckets).
    ///
    /// # Errors
    /// As the crate's `HistogramVec::new`: an invalid name or label name, a label named
    /// `le`, or bounds that do not increase.
    pub(crate) fn new(
        name: &str,
        help: &str,
        labels: &[&str],
        bounds: &[f64],
    ) -> Result<Self, prometheus::Error> {
        let desc = Desc::new(
            name.to_owned(),
            help.to_owned(),
            labels.iter().map(|label| (*label).to_owned()).collect(),
            HashMap::new(),
        )?;
        if labels.contains(&"le") {
            return Err(prometheus::Error::Msg(
                "`le` is not allowed as a label name in histograms".to_owned(),
            ));
        }
        let mut bounds = if bounds.is_empty() {
            prometheus::DEFAULT_BUCKETS.to_vec()
        } else {
            bounds.to_vec()
        };
        if let Some(pair) = bounds.windows(2).find(|pair| pair[0] >= pair[1]) {
            return Err(prometheus::Error::Msg(format!(
                "histogram buckets must be in increasing order: {} >= {}",
                pair[0], pair[1]
            )));
        }
        if bounds.last() == Some(&f64::INFINITY) {
            bounds.pop();
        }
        Ok(DurationHistogramVec {
            family: Arc::new(Family {
                desc,
                limits: bounds.iter().map(|&bound| nanos_over(bound)).collect(),
                bounds: bounds.into(),
                children: RwLock::default(),
            }),
        })
    }

    /// The series of these label values (in the order of the label names), created empty
    /// on first use.
    ///
    /// # Panics
    /// If the number of values is not the number of label names.
    pub(crate) fn with_label_values(&self, values: &[&str]) -> DurationHistogram {
        let names = &self.family.desc.variable_labels;
        assert_eq!(
            values.len(),
            names.len(),
            "{}: label values {values:?} for labels {names:?}",
            self.family.desc.fq_name
        );
        let key: Box<[String]> = values.iter().map(|value| (*value).to_owned()).collect();
        if let Some(child) = self.read_children().get(&key) {
            return child.clone();
        }
        let mut children = self
            .family
            .children
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        children
            .entry(key)
            .or_insert_with_key(|values| DurationHistogram::new(&self.family, values))
            .clone()
    }

    /// Removes the series of these labels (every label name with its value).
    ///
    /// # Errors
    /// If a label name is missing, or there is no such series.
    pub(crate) fn remove(&self, labels: &HashMap<&str, &str>) -> Result<(), prometheus::Error> {
        let desc = &self.family.desc;
        if labels.len() != desc.variable_labels.len() {
            return Err(prometheus::Error::InconsistentCardinality {
                expect: desc.variable_labels.len(),
                got: labels.len(),
            });
        }
        let key = desc
            .variable_labels
            .iter()
            .map(|name| labels.get(name.as_str()).map(|value| (*value).to_owned()))
            .collect::<Option<Box<[String]>>>()
            .ok_or_else(|| prometheus::Error::Msg(format!("labels {labels:?} do not match")))?;
        let mut children = self
            .family
            .children
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match children.remove(&key) {
            Some(_) => Ok(()),
            None => Err(prometheus::Error::Msg(format!("no series {labels:?}"))),
        }
    }

    fn read_children(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<Box<[String]>, DurationHistogram>> {
        // A panic elsewhere cannot leave the map half-updated: insert and remove are single
        // calls. Keep serving it.
        self.family
            .children
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Collector for DurationHistogramVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.family.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let family = &self.family;
        let mut out = MetricFamily::default();
        out.set_name(family.desc.fq_name.clone());
        out.set_help(family.desc.help.clone());
        out.set_field_type(MetricType::HISTOGRAM);
        out.set_metric(
            self.read_children()
                .values()
                .map(|child| child.metric(&family.bounds))
                .collect(),
        );
        vec![out]
    }
}

impl DurationHistogram {
    fn new(family: &Family, values: &[String]) -> Self {
        let mut labels: Vec<LabelPair> = family
            .desc
            .variable_labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value(value.clone());
                pair
            })
            .collect();
        labels.sort();
        DurationHistogram {
            core: Arc::new(Core {
                buckets: family
                    .limits
                    .iter()
                    .map(|&limit| Bucket {
                        limit,
                        count: AtomicU64::new(0),
                    })
                    .collect(),
                inf: AtomicU64::new(0),
                sum_nanos: AtomicU64::new(0),
                labels,
            }),
        }
    }

    /// Records one duration: two relaxed `fetch_add`s, no lock, no allocation.
    #[inline]
    pub(crate) fn observe(&self, elapsed: Duration) {
        // Over 584 years saturates; it lands in +Inf either way.
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let core = &*self.core;
        let count = core
            .buckets
            .iter()
            .find(|bucket| nanos < bucket.limit)
            .map_or(&core.inf, |bucket| &bucket.count);
        count.fetch_add(1, Ordering::Relaxed);
        core.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The series as the exposition wants it: cumulative buckets, count and sum in seconds.
    fn metric(&self, bounds: &[f64]) -> proto::Metric {
        let core = &*self.core;
        let mut cumulative = 0;
        let buckets = core
            .buckets
            .iter()
            .zip(bounds)
            .map(|(bucket, &bound)| {
                cumulative += bucket.count.load(Ordering::Relaxed);
                let mut out = proto::Bucket::default();
                out.set_cumulative_count(cumulative);
                out.set_upper_bound(bound);
                out
            })
            .collect();
        let mut histogram = proto::Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(cumulative + core.inf.load(Ordering::Relaxed));
        histogram.set_sample_sum(core.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        let mut metric = proto::Metric::from_label(core.labels.clone());
        metric.set_histogram(histogram);
        metric
    }
}

/// The least number of nanoseconds whose `Duration::as_secs_f64()` exceeds `bound` (0 for
/// a bound under zero or NaN, which nothing satisfies; `u64::MAX` past 584 years).
fn nanos_over(bound: f64) -> u64 {
    let seconds = |nanos: u64| Duration::from_nanos(nanos).as_secs_f64();
    if bound.is_nan() || bound < 0.0 {
        return 0;
    }
    if bound * 1e9 >= u64::MAX as f64 {
        return u64::MAX;
    }
    // A guess within a few nanoseconds (the float product rounds), then made exact;
    // `as_secs_f64` is monotonic in the nanoseconds.
    let mut nanos = (bound * 1e9) as u64;
    while nanos > 0 && seconds(nanos - 1) > bound {
        nanos -= 1;
    }
    while seconds(nanos) <= bound {
        nanos += 1;
    }
    nanos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(labels: &[&str], bounds: &[f64]) -> DurationHistogramVec {
        DurationHistogramVec::new("test_seconds", "Test.", labels, bounds).unwrap()
    }

    /// (upper bound, cumulative count) of each bucket, count and sum of the only series.
    fn snapshot(family: &DurationHistogramVec) -> (Vec<(f64, u64)>, u64, f64) {
        let families = family.collect();
        let metrics = families[0].get_metric();
        assert_eq!(metrics.len(), 1);
        let histogram = metrics[0].get_histogram();
        let buckets = histogram
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        (
            buckets,
            histogram.get_sample_count(),
            histogram.get_sample_sum(),
        )
    }

    #[test]
    fn bounds_in_nanoseconds_are_exact() {
        for bound in crate::metrics::DEFAULT_BUCKETS.into_iter().chain([
            1e-9,
            0.1 + 0.2,
            1.0 / 3.0,
            123.456_789_012,
            0.0,
        ]) {
            let limit = nanos_over(bound);
            assert!(Duration::from_nanos(limit).as_secs_f64() > bound, "{bound}");
            assert!(
                limit == 0 || Duration::from_nanos(limit - 1).as_secs_f64() <= bound,
                "{bound}"
            );
        }
        assert_eq!(nanos_over(0.005), 5_000_001);
        assert_eq!(nanos_over(-1.0), 0);
        assert_eq!(nanos_over(f64::NAN), 0);
        assert_eq!(nanos_over(1e300), u64::MAX);
    }

    #[test]
    fn placement_at_and_around_the_bounds() {
        let histogram = family(&[], &[0.005, 0.01, 1.0]);
        let child = histogram.with_label_values(&[]);
        for nanos in [
            0,
            4_999_999,
            5_000_000,  // le 0.005: on the bound
            5_000_001,  // le 0.01
            10_000_000, // le 0.01
            10_000_001, // le 1
            999_999_999,
            1_000_000_000,
            1_000_000_001, // +Inf
        ] {
            child.observe(Duration::from_nanos(nanos));
        }
        child.observe(Duration::MAX);
        let (buckets, count, _) = snapshot(&histogram);
        assert_eq!(buckets, [(0.005, 3), (0.01, 5), (1.0, 8)]);
        assert_eq!(count, 10);
    }

    #[test]
    fn cumulative_buckets_count_and_sum() {
        let histogram = family(&[], &[0.1, 0.5, f64::INFINITY]);
        let child = histogram.with_label_values(&[]);
        for millis in [50, 50, 200, 700, 100] {
            child.observe(Duration::from_millis(millis));
        }
        let (buckets, count, sum) = snapshot(&histogram);
        assert_eq!(buckets, [(0.1, 3), (0.5, 4)], "+Inf is implicit");
        assert_eq!(count, 5);
        assert_eq!(sum, 1.1);
    }

    #[test]
    fn children_by_labels_and_removal() {
        let histogram = family(&["api", "operation"], &[1.0]);
        let a = histogram.with_label_values(&["sms", "Send"]);
        a.observe(Duration::from_millis(1));
        // The same labels are the same series.
        histogram
            .with_label_values(&["sms", "Send"])
            .observe(Duration::from_secs(2));
        histogram
            .with_label_values(&["chat", "Send"])
            .observe(Duration::from_secs(3));
        let count = |api: &str| {
            histogram.collect()[0]
                .get_metric()
                .iter()
                .find(|m| m.get_label()[0].value() == api)
                .map(|m| m.get_histogram().get_sample_count())
        };
        assert_eq!((count("sms"), count("chat")), (Some(2), Some(1)));

        let labels = HashMap::from([("api", "sms"), ("operation", "Send")]);
        histogram.remove(&labels).unwrap();
        assert!(histogram.remove(&labels).is_err(), "already gone");
        assert!(histogram.remove(&HashMap::from([("api", "chat")])).is_err());
        assert_eq!((count("sms"), count("chat")), (None, Some(1)));
        // A new child of the removed labels starts from zero.
        histogram
            .with_label_values(&["sms", "Send"])
            .observe(Duration::ZERO);
        assert_eq!(count("sms"), Some(1));
    }

    /// The same observations in the crate's `HistogramVec` and in ours, both through the
    /// registry and our encoder: the same bytes. Sums are compared exactly, so each series
    /// holds one observation, or only multiples of 1/512 s, which both sum without rounding.
    #[test]
    fn same_text_as_the_crates_histogram_vec() {
        use crate::metrics::DEFAULT_BUCKETS;
        use prometheus::{HistogramOpts, HistogramVec, Registry};

        let (name, help) = ("acsgate_request_duration_seconds", "Time \\ \"taken\"\n.");
        let labels = ["api", "operation", "status_subclass"];
        let ours = DurationHistogramVec::new(name, help, &labels, &DEFAULT_BUCKETS).unwrap();
        let theirs = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(DEFAULT_BUCKETS.to_vec()),
            &labels,
        )
        .unwrap();
        let observe = |values: &[&str], elapsed: Duration| {
            ours.with_label_values(values).observe(elapsed);
            theirs
                .with_label_values(values)
                .observe(elapsed.as_secs_f64());
        };
        // At, just under and just over every bound, one series each.
        for (i, bound) in DEFAULT_BUCKETS.into_iter().enumerate() {
            let nanos = (bound * 1e9).round() as u64;
            for (offset, nanos) in [("under", nanos - 1), ("at", nanos), ("over", nanos + 1)] {
                let operation = format!("{i}-{offset}");
                observe(&["sms", &operation, "2xx"], Duration::from_nanos(nanos));
            }
        }
        // Many observations across every bucket and +Inf, in odd labels.
        for step in 0..200u64 {
            let elapsed = Duration::from_nanos(1_953_125 * step * step);
            observe(&["we\"ird\\api", "line\nbreak", "5xx"], elapsed);
            observe(&["chat", "Send", "2xx"], elapsed * 2);
        }
        observe(&["chat", "Send", "4xx"], Duration::ZERO);
        let text = |collector: Box<dyn Collector>| {
            let registry = Registry::new();
            registry.register(collector).unwrap();
            let mut out = Vec::new();
            crate::metrics::text::encode(&registry.gather(), &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let (ours, theirs) = (text(Box::new(ours)), text(Box::new(theirs)));
        assert!(ours.contains(
            "_bucket{api=\"chat\",operation=\"Send\",status_subclass=\"2xx\",le=\"+Inf\"}"
        ));
        assert_eq!(ours, theirs);
    }

    /// Scrapes racing observations: every scrape is cumulative, and `_count` and `_sum` never
    /// go back; once the observers are done, nothing is lost.
    #[test]
    fn concurrent_scrapes_only_see_growth() {
        let histogram = family(&[], &[0.001, 0.002]);
        let child = histogram.with_label_values(&[]);
        let (threads, each) = (4, 20_000u64);
        std::thread::scope(|scope| {
            for thread in 0..threads {
                let child = child.clone();
                scope.spawn(move || {
                    for i in 0..each {
                        child.observe(Duration::from_micros((i + thread) % 3_000));
                    }
                });
            }
            let (mut count, mut sum) = (0, 0.0);
            for _ in 0..200 {
                let (buckets, next_count, next_sum) = snapshot(&histogram);
                assert!(buckets[0].1 <= buckets[1].1 && buckets[1].1 <= next_count);
                assert!(next_count >= count && next_sum >= sum);
                (count, sum) = (next_count, next_sum);
            }
        });
        let (_, count, sum) = snapshot(&histogram);
        assert_eq!(count, threads * each);
        let micros: u64 = (0..threads)
            .flat_map(|thread| (0..each).map(move |i| (i + thread) % 3_000))
            .sum();
        assert_eq!(sum, micros as f64 / 1e6);
    }

    #[test]
    fn invalid_families_are_refused() {
        let new = |labels: &[&str], bounds: &[f64]| {
            DurationHistogramVec::new("test_seconds", "Test.", labels, bounds).is_err()
        };
        assert!(new(&[], &[1.0, 1.0]));
        assert!(new(&[], &[2.0, 1.0]));
        assert!(new(&["le"], &[1.0]));
        assert!(new(&["bad-name"], &[1.0]));
        assert!(!new(&[], &[]), "the crate's default buckets");
    }
}
