//! The pod watch (`tracer::k8s::watch`) against a fake Kubernetes API server on loopback
//! (`tracer_tests::kube_api`), reached through a kubeconfig file the test writes: the real kube
//! client and watcher, the real list and watch requests, JSON watch events streamed a line at a
//! time. No cluster, no privileges.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracer::k8s::watch::{PodWatch, WatchState};
use tracer::k8s::{Kubernetes, PodLookup};
use tracer::span::{AttrValue, find};
use tracer_tests::kube_api::{FakeKubeApi, pod_json, query_params};

const NODE: &str = "node-a";
const UID_A: &str = "0a1b2c3d-0000-4111-8222-333344445555";
const UID_B: &str = "0a1b2c3d-0000-4111-8222-666677778888";
const UID_ELSEWHERE: &str = "0a1b2c3d-0000-4111-8222-999900001111";
/// Generous for two shared cores; the watch itself answers in milliseconds.
const WAIT: Duration = Duration::from_secs(15);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tracer-k8s-watch-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn spawn(
    rt: &tokio::runtime::Runtime,
    kubeconfig: &Path,
) -> (PodWatch, tokio::task::JoinHandle<()>) {
    let _in_runtime = rt.enter();
    PodWatch::spawn(NODE, Some(kubeconfig.to_owned()))
}

fn web_pod(labels: &[(&str, &str)]) -> serde_json::Value {
    pod_json(
        UID_A,
        "web-7d4b9c6f8d-x2x9z",
        "shop",
        NODE,
        labels,
        Some(("ReplicaSet", "web-7d4b9c6f8d")),
    )
}

fn label(watch: &PodWatch, uid: &str, key: &str) -> Option<String> {
    let pod = watch.pod(uid)?;
    pod.labels
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[test]
fn watch_follows_the_pods_of_its_node() {
    let api = FakeKubeApi::start();
    api.add(web_pod(&[
        ("app.kubernetes.io/name", "storefront"),
        ("pod-template-hash", "7d4b9c6f8d"),
    ]));
    api.add(pod_json(
        UID_ELSEWHERE,
        "db-0",
        "data",
        "node-b",
        &[],
        Some(("StatefulSet", "db")),
    ));
    let kubeconfig = api.write_kubeconfig(&scratch("follow"));
    let rt = runtime();
    let (watch, task) = spawn(&rt, &kubeconfig);

    // Listed: found by uid with its labels and controller owner.
    wait_until("the listed pod", || watch.pod(UID_A).is_some());
    let pod = watch.pod(UID_A).unwrap();
    assert_eq!(pod.name, "web-7d4b9c6f8d-x2x9z");
    assert_eq!(pod.namespace, "shop");
    assert_eq!(
        pod.owner,
        Some(("ReplicaSet".to_owned(), "web-7d4b9c6f8d".to_owned()))
    );
    assert_eq!(
        label(&watch, UID_A, "app.kubernetes.io/name").as_deref(),
        Some("storefront")
    );
    wait_until("synced", || watch.state() == WatchState::Synced);
    assert_eq!(watch.pod(UID_ELSEWHERE), None, "a pod of another node");
    assert_eq!(watch.len(), 1);

    // Through the agent's identity: labels and workload on a process of that pod.
    let kubernetes =
        Kubernetes::new(Some(NODE.into()), "host".into()).with_lookup(Arc::new(watch.clone()));
    let cgroup = format!(
        "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-x.scope\n",
        UID_A.replace('-', "_")
    );
    let id = kubernetes.identify(Path::new("/nonexistent"), &cgroup, &[]);
    assert_eq!(id.service_name.as_deref(), Some("storefront"));
    assert_eq!(
        find(&id.attributes, "k8s.deployment.name"),
        Some(&AttrValue::Str("web".into()))
    );

    // One list and a watch, both of this node's pods only, the watch from the list's version.
    wait_until("a watch request", || {
        api.requests().iter().any(|r| r.contains("watch=true"))
    });
    let requests = api.requests();
    assert!(
        requests.iter().all(|r| r.starts_with("GET /api/v1/pods?")),
        "{requests:#?}"
    );
    for r in &requests {
        let params = query_params(r);
        assert!(
            params.contains(&("fieldSelector".to_owned(), format!("spec.nodeName={NODE}"))),
            "no node field selector in {r}"
        );
    }
    let lists: Vec<&String> = requests
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .collect();
    assert_eq!(lists.len(), 1, "one list: {requests:#?}");
    assert!(
        query_params(lists[0]).contains(&("resourceVersion".to_owned(), "0".to_owned())),
        "the list is served from the API server's cache: {}",
        lists[0]
    );

    // ADDED after the list arrives through the watch.
    api.add(pod_json(
        UID_B,
        "worker-1",
        "shop",
        NODE,
        &[("app", "worker")],
        Some(("Job", "worker")),
    ));
    wait_until("the added pod", || watch.pod(UID_B).is_some());

    // MODIFIED: new labels replace the old ones, and the generation moves.
    let before = watch.generation();
    api.modify(web_pod(&[
        ("app.kubernetes.io/name", "checkout"),
        ("pod-template-hash", "7d4b9c6f8d"),
    ]));
    wait_until("the new label", || {
        label(&watch, UID_A, "app.kubernetes.io/name").as_deref() == Some("checkout")
    });
    assert!(watch.generation() > before);
    let id = kubernetes.identify(Path::new("/nonexistent"), &cgroup, &[]);
    assert_eq!(id.service_name.as_deref(), Some("checkout"));

    // DELETED: gone from the lookup.
    api.delete(UID_A);
    wait_until("the deleted pod to go", || watch.pod(UID_A).is_none());
    let id = kubernetes.identify(Path::new("/nonexistent"), &cgroup, &[]);
    assert_eq!(id.service_name, None, "node-side identity only");
    assert_eq!(
        find(&id.attributes, "k8s.pod.uid"),
        Some(&AttrValue::Str(UID_A.into()))
    );

    // The API server ends the watch stream (its timeout): the watch resumes where it was.
    api.close_watches();
    api.modify(pod_json(
        UID_B,
        "worker-1",
        "shop",
        NODE,
        &[("app", "worker-2")],
        Some(("Job", "worker")),
    ));
    wait_until("the change after the stream ended", || {
        label(&watch, UID_B, "app").as_deref() == Some("worker-2")
    });
    assert!(!task.is_finished());
    assert_eq!(watch.state(), WatchState::Synced);
    rt.shutdown_timeout(Duration::from_secs(2));
}

#[test]
fn unreachable_api_leaves_node_side_identity() {
    let dir = scratch("down");
    let kubeconfig = {
        // A port nothing listens on any more: connection refused.
        let api = FakeKubeApi::start();
        api.write_kubeconfig(&dir)
    };
    let rt = runtime();
    let started = Instant::now();
    let (watch, task) = spawn(&rt, &kubeconfig);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "spawn returns at once"
    );
    let looked_up = Instant::now();
    assert_eq!(watch.pod(UID_A), None);
    assert!(
        looked_up.elapsed() < Duration::from_millis(50),
        "lookups never wait"
    );
    wait_until("the failure to be noticed", || {
        matches!(watch.state(), WatchState::Failing(_))
    });
    let WatchState::Failing(reason) = watch.state() else {
        unreachable!()
    };
    assert!(
        reason.contains("failed to perform initial object list")
            && reason.contains("Connection refused"),
        "{reason}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "noticed promptly: {:?}",
        started.elapsed()
    );
    // Still retrying (with backoff), not dead, and lookups still answer.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!task.is_finished());
    assert_eq!(watch.pod(UID_A), None);
    let kubernetes = Kubernetes::new(Some(NODE.into()), "host".into()).with_lookup(Arc::new(watch));
    let cgroup = format!("0::/kubepods/pod{UID_A}/c\n");
    let id = kubernetes.identify(
        Path::new("/nonexistent"),
        &cgroup,
        &["POD_NAME=web-1".into()],
    );
    assert_eq!(
        find(&id.attributes, "k8s.pod.name"),
        Some(&AttrValue::Str("web-1".into()))
    );
    rt.shutdown_timeout(Duration::from_secs(2));
}

#[test]
fn forbidden_list_is_explained_and_retried_until_allowed() {
    let api = FakeKubeApi::start();
    api.forbid(true);
    api.add(web_pod(&[("app.kubernetes.io/name", "storefront")]));
    let kubeconfig = api.write_kubeconfig(&scratch("forbidden"));
    let rt = runtime();
    let started = Instant::now();
    let (watch, task) = spawn(&rt, &kubeconfig);
    wait_until("the 403 to be noticed", || {
        matches!(watch.state(), WatchState::Failing(_))
    });
    // Retries back off: 0.8 s, 1.6 s, 3.2 s (plus jitter) put the 4th attempt at 5.6 s or
    // later; a backoff that never grew (0.8-1.6 s each) would have made 4 by 4.8 s.
    std::thread::sleep(Duration::from_millis(5200).saturating_sub(started.elapsed()));
    let attempts = api.requests().len();
    assert!(
        (2..=3).contains(&attempts),
        "{attempts} list attempts in 5.2 s: {:#?}",
        api.requests()
    );
    let WatchState::Failing(reason) = watch.state() else {
        unreachable!()
    };
    assert!(
        reason.contains("forbidden (403") && reason.contains("rbac.yaml"),
        "{reason}"
    );
    assert_eq!(watch.pod(UID_A), None);
    // RBAC fixed: the next retry (at most ~8 s from the start) lists the pods.
    api.forbid(false);
    wait_until("the pod after the retry", || watch.pod(UID_A).is_some());
    wait_until("synced", || watch.state() == WatchState::Synced);
    assert!(!task.is_finished());
    rt.shutdown_timeout(Duration::from_secs(2));
}

#[test]
fn unusable_kubeconfig_stops_the_watch_only() {
    let dir = scratch("badconfig");
    let path = dir.join("kubeconfig");
    std::fs::write(&path, "this: is: not a kubeconfig\n").unwrap();
    let rt = runtime();
    let (watch, task) = spawn(&rt, &path);
    wait_until("the watch to stop", || task.is_finished());
    assert!(
        matches!(watch.state(), WatchState::Stopped(_)),
        "{:?}",
        watch.state()
    );
    assert_eq!(watch.pod(UID_A), None);
    rt.block_on(task).expect("no panic");
}
