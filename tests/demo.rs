//! End to end: the real `acsgate demo` binary, its table and its exit status.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use acsgate::catalogue::Catalogue;

/// A run that takes longer than this is killed and the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `acsgate` with `args`, killing it by PID if it overruns [`DEADLINE`].
fn acsgate(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_acsgate"))
        .args(args)
        .env_remove("ACSGATE_UPSTREAM")
        .env_remove("ACSGATE_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start acsgate");
    // Drain both pipes on their own threads so a chatty child never blocks on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for acsgate") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("acsgate {args:?} ran longer than {DEADLINE:?}; killed it");
        }
        thread::sleep(Duration::from_millis(50));
    };
    Run {
        success: status.success(),
        stdout: stdout.join().expect("stdout thread"),
        stderr: stderr.join().expect("stderr thread"),
    }
}

/// One table row: api, operation, then COUNT 2XX 4XX 5XX.
#[derive(Debug, PartialEq)]
struct Row {
    api: String,
    operation: String,
    counts: [u64; 4],
}

/// Parses the rows between the header and the rule line, and the TOTAL line's counts.
fn table(stdout: &str) -> (Vec<Row>, [u64; 4]) {
    let mut lines = stdout
        .lines()
        .skip_while(|line| !line.starts_with("API "))
        .skip(1);
    let mut rows = Vec::new();
    for line in lines.by_ref() {
        if line.starts_with("---") {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(words.len() >= 8, "short row: {line}");
        // api, operation (may contain spaces), count, 2xx, 4xx, 5xx, p50, p99
        let numbers = &words[words.len() - 6..words.len() - 2];
        rows.push(Row {
            api: words[0].to_owned(),
            operation: words[1..words.len() - 6].join(" "),
            counts: counts(numbers, line),
        });
    }
    let total = lines.next().expect("a TOTAL line after the rule");
    let words: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"TOTAL"), "{total}");
    assert!(words.len() >= 5, "{total}");
    (rows, counts(&words[1..5], total))
}

fn counts(words: &[&str], line: &str) -> [u64; 4] {
    let mut out = [0; 4];
    for (slot, word) in out.iter_mut().zip(words) {
        *slot = word
            .parse()
            .unwrap_or_else(|_| panic!("`{word}` is not a count in: {line}"));
    }
    out
}

const DEMO: [&str; 10] = [
    "demo",
    "--once",
    "--requests",
    "400",
    "--seed",
    "7",
    "--listen",
    "127.0.0.1:0",
    "--admin",
    "127.0.0.1:0",
];

#[test]
fn demo_once_prints_every_covered_operation_and_adds_up() {
    let run = acsgate(&DEMO);
    assert!(
        run.success,
        "exit status\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let (rows, total) = table(&run.stdout);

    // 400 requests cover every route of the built-in catalogue, plus unknown routes.
    let listed: BTreeSet<(&str, &str)> = rows
        .iter()
        .map(|row| (row.api.as_str(), row.operation.as_str()))
        .collect();
    let catalogue = Catalogue::builtin();
    for route in catalogue.routes() {
        let operation = catalogue.operation(route.operation);
        let api = &catalogue.api(operation.api).name;
        assert!(
            listed.contains(&(api.as_str(), operation.name.as_str())),
            "{api} {} ({} {}) missing from the table:\n{}",
            operation.name,
            route.method,
            route.template,
            run.stdout
        );
    }
    assert!(
        rows.iter().any(|row| row.operation == "Bad Route"),
        "{}",
        run.stdout
    );
    assert!(listed.contains(&("rooms", "RemoveParticipants")));

    // The total line: 400 requests, each 2xx, 4xx or 5xx; the rows add up to it.
    assert_eq!(total[0], 400, "{}", run.stdout);
    assert_eq!(total[1] + total[2] + total[3], 400, "{}", run.stdout);
    let summed = rows.iter().fold([0; 4], |mut sum, row| {
        for (s, c) in sum.iter_mut().zip(row.counts) {
            *s += c;
        }
        sum
    });
    assert_eq!(summed, total, "{}", run.stdout);
    // The simulator mixes in errors; bad routes are 404s.
    assert!(total[2] > 0 && total[3] > 0, "{}", run.stdout);
    assert!(run.stdout.contains("/metrics"), "{}", run.stdout);
}

#[test]
fn the_same_seed_gives_the_same_counts() {
    let first = acsgate(&DEMO);
    let second = acsgate(&DEMO);
    assert!(
        first.success && second.success,
        "{}{}",
        first.stderr,
        second.stderr
    );
    assert_eq!(table(&first.stdout), table(&second.stdout));
}

#[test]
fn a_busy_port_is_a_one_line_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = busy.local_addr().expect("address").to_string();
    let run = acsgate(&[
        "demo",
        "--once",
        "--listen",
        &address,
        "--admin",
        "127.0.0.1:0",
    ]);
    assert!(!run.success, "{}", run.stdout);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.starts_with("acsgate: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains(&address) && errors[0].contains("--listen"),
        "{}",
        errors[0]
    );
}
