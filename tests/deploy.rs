//! The deployment files agree with the gateway: the Kubernetes sidecar's probes, ports and
//! scrape settings (checked against a running gateway), the PodMonitor, and the Dockerfile.
//! No cluster or Docker engine runs here, so the files are parsed and checked, not applied.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use clap::{CommandFactory, Parser};
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_yaml_ng::Value;

use acsgate::cli::Cli;
use acsgate::config::{Config, DEFAULT_ADMIN, DEFAULT_LISTEN};
use support::{Upstream, gateway, h1_client, request, send, settings};

/// Variables read from the environment only (secrets), never through a flag.
const SECRET_ENV: [&str; 2] = [
    acsgate::auth::UPSTREAM_KEY_ENV,
    acsgate::auth::CALLER_KEY_ENV,
];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of every YAML file in `deploy/kubernetes`.
fn manifests() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("readable");
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let value =
                    Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                docs.push(value);
            }
        }
    }
    docs
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_sequence()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// The container port a probe's `port` names (or gives as a number).
fn port_of(container: &Value, port: &Value) -> u16 {
    if let Some(number) = port.as_u64() {
        return u16::try_from(number).expect("port");
    }
    let name = str_of(port, "port");
    let declared = container["ports"]
        .as_sequence()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no container port named {name}"));
    u16::try_from(declared["containerPort"].as_u64().expect("containerPort")).expect("port")
}

#[tokio::test]
async fn kubernetes_sidecar_matches_the_gateway() {
    let docs = manifests();
    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"];
    let sidecar = pod["spec"]["initContainers"]
        .as_sequence()
        .and_then(|c| c.iter().find(|c| c["name"] == "acsgate"))
        .expect("acsgate is an init container");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");

    // The admin listener: the default port, on every interface so Prometheus can reach it.
    let default_admin: SocketAddr = DEFAULT_ADMIN.parse().unwrap();
    let admin: SocketAddr = str_of(&env(sidecar, "ACSGATE_ADMIN")["value"], "ACSGATE_ADMIN")
        .parse()
        .expect("ACSGATE_ADMIN is an address");
    assert!(admin.ip().is_unspecified(), "{admin}");
    assert_eq!(admin.port(), default_admin.port());

    let probes = ["startupProbe", "readinessProbe", "livenessProbe"].map(|probe| {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(port_of(sidecar, &get["port"]), admin.port(), "{probe}");
        (probe, str_of(&get["path"], probe).to_owned())
    });
    assert_eq!(probes[1].1, "/readyz");
    assert_eq!(probes[2].1, "/healthz");
    assert_eq!(
        str_of(&env(sidecar, "ACSGATE_UPSTREAM")["value"], "upstream")
            .split(':')
            .next(),
        Some("https")
    );
    let key = &env(sidecar, "ACSGATE_UPSTREAM_ACCESS_KEY")["valueFrom"]["secretKeyRef"];
    assert!(key["name"].is_string() && key["key"].is_string(), "{key:?}");

    // Every ACSGATE_* variable is an option of the binary, and together they are a valid
    // configuration: each is passed as the flag clap reads that variable for.
    let command = Cli::command();
    let mut args = vec!["acsgate".to_owned()];
    for var in sidecar["env"].as_sequence().unwrap() {
        let name = str_of(&var["name"], "env name");
        if SECRET_ENV.contains(&name) {
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|e| e == name))
            .unwrap_or_else(|| panic!("{name} is not an acsgate option"));
        args.push(format!("--{}", arg.get_long().expect("a long flag")));
        args.push(str_of(&var["value"], name).to_owned());
    }
    let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let config = Config::from_settings(cli.merged_settings().unwrap())
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let events = config.events.expect("the example runs the events listener");
    assert_eq!(
        port_of(sidecar, &Value::from("events")),
        events.listen.port()
    );

    // The app reaches the sidecar on the default proxy listener.
    let app = &pod["spec"]["containers"][0];
    let listen: SocketAddr = DEFAULT_LISTEN.parse().unwrap();
    assert_eq!(
        str_of(&env(app, "ACS_ENDPOINT")["value"], "ACS_ENDPOINT"),
        format!("http://{listen}")
    );

    // Scrape annotations and the PodMonitor point at the admin port's /metrics.
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        admin.port().to_string().as_str()
    );
    let metrics_path = str_of(&annotations["prometheus.io/path"], "path");
    let monitor = kind(&docs, "PodMonitor");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        pod["metadata"]["labels"]
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(port_of(sidecar, &endpoint["port"]), admin.port());
    assert_eq!(endpoint["path"], metrics_path);

    // A running gateway answers 200 on every path the manifests use.
    let upstream = Upstream::ok().await;
    let gw = gateway(settings(&upstream.url())).await;
    let client = h1_client();
    for path in probes
        .iter()
        .map(|(_, path)| path.as_str())
        .chain([metrics_path])
    {
        let (response, _) = send(&client, request(Method::GET, gw.admin_addr(), path, "")).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    gw.shutdown().await;
}

#[test]
fn dockerfile_health_checks_the_admin_listener_as_non_root() {
    let dockerfile = read("Dockerfile");
    let line = |instruction: &str| {
        dockerfile
            .lines()
            .rfind(|l| l.starts_with(instruction))
            .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"))
            .to_owned()
    };
    let admin: SocketAddr = DEFAULT_ADMIN.parse().unwrap();
    let listen: SocketAddr = DEFAULT_LISTEN.parse().unwrap();
    let expose = line("EXPOSE ");
    for port in [admin.port(), listen.port()] {
        assert!(
            expose.split_whitespace().any(|p| p == port.to_string()),
            "{expose}"
        );
    }
    let healthcheck = dockerfile
        .split("\nHEALTHCHECK ")
        .nth(1)
        .expect("a HEALTHCHECK instruction");
    assert!(
        healthcheck.contains(r#"CMD ["/usr/local/bin/acsgate", "healthcheck"]"#),
        "{healthcheck}"
    );
    let user = line("USER ");
    assert!(
        user.trim_start_matches("USER ")
            .trim()
            .parse::<u32>()
            .is_ok_and(|uid| uid != 0),
        "{user}"
    );
}

/// The image's build stage runs `scripts/pgo-build.sh --training demo`, and the script sources
/// files of its own: each must be copied into the stage, or the image fails to build only
/// where Docker runs (no Docker engine runs here).
#[test]
fn dockerfile_copies_what_its_profile_guided_build_reads() {
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("scripts/pgo-build.sh --training demo"),
        "the build stage no longer runs the demo-trained PGO build"
    );
    // The sources of every `COPY` from the build context (the last word is the destination).
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .filter(|args| !args.starts_with("--from"))
        .flat_map(|args| {
            let words: Vec<&str> = args.split_whitespace().collect();
            words[..words.len().saturating_sub(1)].to_vec()
        })
        .collect();
    let is_copied = |path: &str| {
        copied.iter().any(|source| {
            let source = source.trim_end_matches('/');
            path == source || path.starts_with(&format!("{source}/"))
        })
    };
    let script = read("scripts/pgo-build.sh");
    let mut read_by_script = vec!["scripts/pgo-build.sh".to_owned()];
    read_by_script.extend(script.lines().filter_map(|line| {
        let file = line.trim().strip_prefix("source \"$HERE/")?;
        Some(format!("bench/{}", file.trim_end_matches('"')))
    }));
    assert!(
        read_by_script.len() > 1,
        "no `source` line found in the script"
    );
    for path in &read_by_script {
        assert!(
            is_copied(path),
            "{path} is not copied into the build stage: {copied:?}"
        );
    }
}
