//! The deployment files under `deploy/`: what they promise about privileges, mounts, probes and
//! API access, checked by parsing them (no cluster, no container engine, no systemd needed),
//! then the offline validators: `kubernetes-validate --strict` on every Kubernetes manifest and
//! `systemd-analyze verify` on the unit. A missing validator fails the test, never skips it.

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

/// Capabilities the DaemonSet adds (after dropping ALL); each is explained in daemonset.yaml.
const POD_CAPABILITIES: [&str; 5] = [
    "BPF",
    "PERFMON",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
    "SYS_RESOURCE",
];
/// Capabilities of the systemd unit; memlock is raised by systemd instead of CAP_SYS_RESOURCE.
const UNIT_CAPABILITIES: [&str; 4] = [
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_PTRACE",
    "CAP_DAC_READ_SEARCH",
];
const HEALTH_PORT: u64 = 9464;
/// The Kubernetes manifests, as kustomization.yaml lists them.
const MANIFESTS: [&str; 5] = [
    "namespace.yaml",
    "serviceaccount.yaml",
    "rbac.yaml",
    "configmap.yaml",
    "daemonset.yaml",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn kubernetes_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every YAML document of a manifest file.
fn documents(file: &str) -> Vec<Value> {
    let path = kubernetes_dir().join(file);
    let text = read(&path);
    text.split("\n---\n")
        .map(|doc| {
            serde_yaml_ng::from_str(doc).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
        })
        .collect()
}

/// The one document of `kind` in `file`.
fn object(file: &str, kind: &str) -> Value {
    let mut found: Vec<Value> = documents(file)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "{file}: expected one {kind}");
    found.remove(0)
}

fn pod_spec() -> Value {
    object("daemonset.yaml", "DaemonSet")["spec"]["template"]["spec"].clone()
}

fn agent_container() -> Value {
    let spec = pod_spec();
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container, the agent");
    containers[0].clone()
}

fn strings(value: &Value) -> BTreeSet<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, got {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("expected a string, got {v}"))
        })
        .collect()
}

#[test]
fn daemonset_uses_host_pids_but_not_the_host_network() {
    let spec = pod_spec();
    assert_eq!(
        spec["hostPID"], true,
        "the agent resolves host pids through /proc"
    );
    assert_ne!(spec["hostNetwork"], true);
    assert_ne!(spec["hostIPC"], true);
    let daemonset = object("daemonset.yaml", "DaemonSet");
    assert_eq!(daemonset["metadata"]["namespace"], "tracer");
    assert_eq!(daemonset["metadata"]["name"], "tracer");
}

#[test]
fn capabilities_are_the_documented_minimal_set() {
    let security = &agent_container()["securityContext"];
    assert_eq!(
        strings(&security["capabilities"]["drop"]),
        BTreeSet::from(["ALL"])
    );
    assert_eq!(
        strings(&security["capabilities"]["add"]),
        BTreeSet::from(POD_CAPABILITIES)
    );
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
}

/// `privileged: true` may appear only in comments (the pre-5.8 fallback), nowhere in the spec.
#[test]
fn nothing_in_the_active_spec_is_privileged() {
    fn privileged_paths(value: &Value, path: &str, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    if key == "privileged" && v == true {
                        found.push(format!("{path}.{key}"));
                    }
                    privileged_paths(v, &format!("{path}.{key}"), found);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    privileged_paths(v, &format!("{path}[{i}]"), found);
                }
            }
            _ => {}
        }
    }
    for file in MANIFESTS {
        let mut found = Vec::new();
        for doc in documents(file) {
            privileged_paths(&doc, file, &mut found);
        }
        assert!(found.is_empty(), "privileged: true at {found:?}");
    }
}

#[test]
fn host_mounts_are_present_and_read_only_where_intended() {
    let spec = pod_spec();
    let container = agent_container();
    let volumes = spec["volumes"].as_array().expect("volumes");
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    // (host path, path in the container, read-only)
    let expected = [
        ("/sys/kernel/btf", "/sys/kernel/btf", true),
        ("/sys/kernel/tracing", "/sys/kernel/tracing", true),
        ("/sys/fs/bpf", "/sys/fs/bpf", false),
        ("/sys/fs/cgroup", "/sys/fs/cgroup", true),
    ];
    for (host_path, mount_path, read_only) in expected {
        let volume = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == host_path)
            .unwrap_or_else(|| panic!("no hostPath volume for {host_path}"));
        assert_eq!(
            volume["hostPath"]["type"], "Directory",
            "{host_path} must exist on the node"
        );
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("volume for {host_path} is not mounted"));
        assert_eq!(mount["mountPath"], mount_path);
        assert_eq!(
            mount["readOnly"] == true,
            read_only,
            "{mount_path}: readOnly"
        );
    }
    // With hostPID the container's /proc is the host's: no host /proc mount, and no other
    // host path than the four above.
    let host_paths: BTreeSet<_> = volumes
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    let expected_paths: BTreeSet<_> = expected.iter().map(|(h, _, _)| *h).collect();
    assert_eq!(host_paths, expected_paths);
}

#[test]
fn probes_and_metrics_port_are_the_health_endpoint() {
    let container = agent_container();
    let ports = container["ports"].as_array().expect("ports");
    let port_number = |port: &Value| -> u64 {
        match port {
            Value::Number(n) => n.as_u64().expect("port number"),
            Value::String(name) => ports
                .iter()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no container port named {name}")),
            other => panic!("bad probe port {other}"),
        }
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_number(&get["port"]), HEALTH_PORT, "{probe}");
    }
    let env = container["env"].as_array().expect("env");
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(
        var("TRACER_HEALTH_ADDR")["value"],
        format!("0.0.0.0:{HEALTH_PORT}")
    );
    assert_eq!(
        var("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT")["value"]
        .as_str()
        .expect("endpoint value");
    assert!(
        endpoint.starts_with("http://") && endpoint.ends_with(":4317"),
        "{endpoint}"
    );
}

#[test]
fn resources_are_requested_and_limited() {
    let resources = &agent_container()["resources"];
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                resources[bound][resource].is_string(),
                "resources.{bound}.{resource} unset"
            );
        }
    }
}

#[test]
fn service_account_and_binding_match() {
    let account = object("serviceaccount.yaml", "ServiceAccount");
    let name = &account["metadata"]["name"];
    let namespace = &account["metadata"]["namespace"];
    assert_eq!(&pod_spec()["serviceAccountName"], name);
    assert_eq!(namespace, "tracer");

    let role = object("rbac.yaml", "ClusterRole");
    let binding = object("rbac.yaml", "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let subjects = binding["subjects"].as_array().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(&subjects[0]["name"], name);
    assert_eq!(&subjects[0]["namespace"], namespace);
}

/// The pod watch (`tracer-user/src/k8s/watch.rs`) lists and watches pods; that, and nothing
/// more, is what the role grants. The service account's token must reach the pod.
#[test]
fn cluster_role_grants_the_pod_watch_and_nothing_else() {
    let role = object("rbac.yaml", "ClusterRole");
    let rules = role["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    assert_eq!(strings(&rules[0]["apiGroups"]), BTreeSet::from([""]));
    assert_eq!(strings(&rules[0]["resources"]), BTreeSet::from(["pods"]));
    assert_eq!(
        strings(&rules[0]["verbs"]),
        BTreeSet::from(["get", "list", "watch"])
    );
    assert!(rules[0].get("resourceNames").is_none());
    let account = object("serviceaccount.yaml", "ServiceAccount");
    assert_ne!(account["automountServiceAccountToken"], false);
    assert_ne!(pod_spec()["automountServiceAccountToken"], false);
}

#[test]
fn cluster_role_only_reads_pods() {
    let role = object("rbac.yaml", "ClusterRole");
    let rules = role["rules"].as_array().expect("rules");
    assert!(!rules.is_empty());
    let read_only = BTreeSet::from(["get", "list", "watch"]);
    for rule in rules {
        let verbs = strings(&rule["verbs"]);
        assert!(
            verbs.is_subset(&read_only),
            "verbs {verbs:?} beyond get/list/watch"
        );
        assert!(
            !strings(&rule["resources"]).contains("*"),
            "wildcard resources"
        );
        assert!(
            !strings(&rule["apiGroups"]).contains("*"),
            "wildcard apiGroups"
        );
        assert!(rule.get("nonResourceURLs").is_none());
    }
}

#[test]
fn namespace_admits_the_privileges_and_kustomization_lists_every_manifest() {
    let namespace = object("namespace.yaml", "Namespace");
    assert_eq!(namespace["metadata"]["name"], "tracer");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );

    let kustomization: Value =
        serde_yaml_ng::from_str(&read(&kubernetes_dir().join("kustomization.yaml")))
            .expect("parse kustomization.yaml");
    assert_eq!(kustomization["namespace"], "tracer");
    assert_eq!(
        strings(&kustomization["resources"]),
        BTreeSet::from(MANIFESTS)
    );
    let on_disk: BTreeSet<String> = std::fs::read_dir(kubernetes_dir())
        .expect("list deploy/kubernetes")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    let listed: BTreeSet<String> = MANIFESTS.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "every manifest is applied by `kubectl apply -k`"
    );
}

/// `Key=value` settings of the unit's `[Service]` section (comments and other sections skipped).
fn unit_service_settings() -> Vec<(String, String)> {
    let unit = read(&deploy_dir().join("systemd/tracer.service"));
    let mut in_service = false;
    let mut settings = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.is_empty() && !line.starts_with('#') {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            settings.push((key.to_owned(), value.to_owned()));
        }
    }
    settings
}

#[test]
fn systemd_unit_grants_the_capabilities_and_keeps_proc_visible() {
    let settings = unit_service_settings();
    let get = |key: &str| -> Option<&str> {
        settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let capabilities = |key: &str| -> BTreeSet<&str> {
        get(key)
            .unwrap_or_else(|| panic!("{key} unset"))
            .split_whitespace()
            .collect()
    };
    assert_eq!(
        capabilities("CapabilityBoundingSet"),
        BTreeSet::from(UNIT_CAPABILITIES)
    );
    assert_eq!(
        capabilities("AmbientCapabilities"),
        BTreeSet::from(UNIT_CAPABILITIES)
    );
    assert_eq!(
        get("Type"),
        Some("simple"),
        "the agent does not implement sd_notify"
    );
    assert_eq!(get("ExecStart"), Some("/usr/local/bin/tracer"));
    assert_eq!(get("LimitMEMLOCK"), Some("infinity"));
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelModules", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(get(key), Some(value), "{key}");
    }
    // These would hide other processes' /proc entries or /sys, which the agent reads.
    for key in [
        "ProtectProc",
        "ProcSubset",
        "ProtectKernelTunables",
        "PrivateDevices",
        "User",
    ] {
        assert_eq!(
            get(key),
            None,
            "{key} must stay unset (see the unit's comments)"
        );
    }
}

/// Runs a validator; a missing one is a failure that says how to install it.
fn run_validator(command: &mut Command, install: &str) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    match command.output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`{program}` is not installed, so the deployment files cannot be validated: {install} \
             (`cargo xtask setup --test-deps` should install it)"
        ),
        Err(e) => panic!("run {program}: {e}"),
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn kubernetes_validate_strict_accepts_every_manifest() {
    let dir = kubernetes_dir();
    let output = run_validator(
        Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .args(MANIFESTS.iter().map(|m| dir.join(m))),
        "pip install kubernetes-validate",
    );
    assert!(
        output.status.success(),
        "kubernetes-validate --strict: {}",
        describe(&output)
    );
    // --quiet prints only warnings and failures (for example an unknown kind): none expected.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.trim().is_empty(), "kubernetes-validate: {said}");
}

/// `systemd-analyze verify` checks that ExecStart exists; the agent is not installed here, so the
/// unit is verified as a copy whose ExecStart points at an executable placeholder.
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let unit = read(&deploy_dir().join("systemd/tracer.service"));
    let exec_start = "\nExecStart=/usr/local/bin/tracer\n";
    assert_eq!(
        unit.matches(exec_start).count(),
        1,
        "ExecStart line to substitute"
    );

    let dir = std::env::temp_dir().join(format!("tracer-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let placeholder = dir.join("tracer");
    std::fs::write(&placeholder, "#!/bin/sh\n").expect("write placeholder");
    std::fs::set_permissions(&placeholder, std::fs::Permissions::from_mode(0o755))
        .expect("chmod placeholder");
    let copy = dir.join("tracer.service");
    let exec_placeholder = format!("\nExecStart={}\n", placeholder.display());
    std::fs::write(&copy, unit.replace(exec_start, &exec_placeholder)).expect("write unit copy");

    let output = run_validator(
        Command::new("systemd-analyze").arg("verify").arg(&copy),
        "apt-get install systemd",
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "systemd-analyze verify: {}",
        describe(&output)
    );
    // Unknown keys and bad values are only warnings (exit status 0): none may appear.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned:\n{said}"
    );
}
