//! Pod labels and owners from the Kubernetes API: one cached watch of the pods on this node.
//!
//! Where it sits in the data flow: the agent starts it once at start-up (`k8s::Kubernetes::start`,
//! only in a cluster or with a `KUBECONFIG`, and with `NODE_NAME` known) as one tokio task beside
//! the pipeline. The task lists and then watches `GET /api/v1/pods?fieldSelector=spec.nodeName=
//! <node>` through `kube_runtime::watcher` (re-list on `410 Gone`, resume on dropped streams,
//! kube_runtime's default backoff policy, 0.8 s doubling to 30 s, between failed attempts) and keeps
//! an in-memory map pod uid -> [`PodMeta`]. Span assembly asks `process.rs` for a process's
//! resource, which asks `k8s.rs` (`Kubernetes::identify`), which reads this map through
//! [`PodLookup`]: a read lock on a hash map for the length of one clone, never a request. A pod
//! not (yet) in the map gets node-side identity only; [`PodLookup::generation`] changes when
//! a pod is added or its labels, name or owner change, so that `process.rs` rebuilds the
//! resources of pod processes it built before.
//!
//! Only what attributes need is kept per pod (uid, name, namespace, labels, controller owner);
//! the rest of each Pod object is dropped as it arrives. A deleted pod leaves the map (resources
//! already built for its processes keep what they had).
//!
//! Failures never stop the agent: a client that cannot be configured is one warning and no
//! watch; an API that is unreachable, refuses the credentials or forbids the list is one
//! warning line when the watch starts failing (and one info line when it recovers) while the
//! watcher keeps retrying with backoff; a first list that takes longer than
//! [`SLOW_SYNC_WARNING`] is one warning too. Until the first list, and while failing, the map
//! holds what it last had.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{utils::Backoff as _, watcher},
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{PodLookup, PodMeta};

/// A first list slower than this is reported (once); the watch goes on waiting.
pub const SLOW_SYNC_WARNING: Duration = Duration::from_secs(30);
/// TCP connect timeout towards the API server (kube's default is 30 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The [`PodMeta`] of a Pod object; `None` without a uid (which the API always sets).
/// The owner is the owner reference marked `controller: true`, as Kubernetes controllers mark
/// the one that manages the pod.
pub fn pod_meta(pod: &Pod) -> Option<PodMeta> {
    let m = &pod.metadata;
    let uid = m.uid.as_deref().map(str::trim).filter(|u| !u.is_empty())?;
    Some(PodMeta {
        uid: uid.to_ascii_lowercase(),
        name: m.name.clone().unwrap_or_default(),
        namespace: m.namespace.clone().unwrap_or_default(),
        labels: m
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        owner: m
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| (o.kind.clone(), o.name.clone())),
    })
}

/// Where the watch stands, for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchState {
    /// Configured, first list not done yet.
    Starting,
    /// The map reflects the API (last list done, watch running).
    Synced,
    /// The last attempt failed (the reason); retrying with backoff.
    Failing(String),
    /// No watch: the client could not be configured (the reason).
    Stopped(String),
}

#[derive(Default)]
struct Shared {
    pods: RwLock<HashMap<String, PodMeta>>,
    generation: AtomicU64,
    state: Mutex<Option<WatchState>>,
}

impl Shared {
    fn set_state(&self, state: WatchState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = Some(state);
    }

    /// Inserts or replaces one pod; bumps the generation when something attributes use changed.
    fn apply(&self, meta: PodMeta) {
        let mut pods = self.pods.write().unwrap_or_else(PoisonError::into_inner);
        if pods.get(&meta.uid) != Some(&meta) {
            pods.insert(meta.uid.clone(), meta);
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    fn delete(&self, uid: &str) {
        self.pods
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }

    /// Replaces the whole map after a (re-)list; bumps the generation if any pod is new or
    /// changed.
    fn replace(&self, listed: HashMap<String, PodMeta>) {
        let mut pods = self.pods.write().unwrap_or_else(PoisonError::into_inner);
        let changed = listed.iter().any(|(uid, m)| pods.get(uid) != Some(m));
        *pods = listed;
        if changed {
            self.generation.fetch_add(1, Ordering::Release);
        }
    }
}

/// The pods of this node as the API shows them, kept current by a background watch.
#[derive(Clone, Default)]
pub struct PodWatch {
    shared: Arc<Shared>,
}

impl PodLookup for PodWatch {
    fn pod(&self, uid: &str) -> Option<PodMeta> {
        self.shared
            .pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uid)
            .cloned()
    }

    fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }
}

impl PodWatch {
    /// Starts the watch of the pods on `node` as a task on the current tokio runtime and
    /// returns at once. The API client comes from the kubeconfig file at `kubeconfig`, or, if
    /// `None`, as kubectl finds it (`KUBECONFIG`, `~/.kube/config`, then the in-cluster
    /// service account). Must be called within a tokio runtime.
    pub fn spawn(node: &str, kubeconfig: Option<PathBuf>) -> (PodWatch, JoinHandle<()>) {
        let watch = PodWatch::default();
        watch.shared.set_state(WatchState::Starting);
        let task = tokio::spawn(run(watch.shared.clone(), node.to_owned(), kubeconfig));
        (watch, task)
    }

    pub fn state(&self) -> WatchState {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or(WatchState::Starting)
    }

    /// Pods currently known.
    pub fn len(&self) -> usize {
        self.shared
            .pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn client(kubeconfig: Option<PathBuf>) -> Result<Client, String> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(&path).map_err(|e| e.to_string())?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| e.to_string())?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Client::try_from(config).map_err(|e| e.to_string())
}

/// One line on why the watch failed, with what to do about a 401/403.
fn explain(e: &watcher::Error) -> String {
    use watcher::Error as W;
    let status = match e {
        W::InitialListFailed(kube::Error::Api(s))
        | W::WatchStartFailed(kube::Error::Api(s))
        | W::WatchFailed(kube::Error::Api(s)) => Some((s.code, s.message.as_str())),
        W::WatchError(s) => Some((s.code, s.message.as_str())),
        _ => None,
    };
    match status {
        Some((403, message)) => format!(
            "forbidden (403: {message}): the agent's service account needs get, list and watch \
             on pods (deploy/kubernetes/rbac.yaml)"
        ),
        Some((401, message)) => format!("unauthorized (401: {message}): check the credentials"),
        _ => with_sources(e),
    }
}

/// An error and its causes, `outer: inner: innermost` (kube's own text often says only
/// "client error (Connect)"; the cause says "Connection refused").
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

async fn run(shared: Arc<Shared>, node: String, kubeconfig: Option<PathBuf>) {
    let client = match client(kubeconfig).await {
        Ok(c) => c,
        Err(e) => {
            warn!(
                "kubernetes: no API client ({e}); no pod watch, pod labels and owners unavailable, \
                 node-side pod identity only"
            );
            shared.set_state(WatchState::Stopped(e));
            return;
        }
    };
    let api: Api<Pod> = Api::all(client);
    // (Re-)lists with `resourceVersion=0` and no page limit: served from the API server's
    // watch cache rather than etcd, as client-go's reflectors do, which matters with one agent
    // per node (kube leaves `resourceVersion=0` out of paged lists). A node's pods are few.
    let mut config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .any_semantic();
    config.page_size = None;
    let mut events = std::pin::pin!(watcher(api, config));
    // kube_runtime's default policy (0.8 s doubling to 30 s, with jitter), applied here rather
    // than with `WatchStreamExt::default_backoff`: that resets on every `Ok` item, and the
    // watcher yields `Ok(Init)` before each list attempt, so a failing list would be retried
    // every 0.8 s forever. Here only a real answer from the API resets it.
    let mut backoff = watcher::DefaultBackoff::default();
    // Objects of a (re-)list in progress; swapped in whole at its end.
    let mut listing: Option<HashMap<String, PodMeta>> = None;
    let mut synced_once = false;
    let mut failing = false;
    let slow_deadline = tokio::time::Instant::now() + SLOW_SYNC_WARNING;
    let mut warned_slow = false;
    loop {
        let next = if synced_once || warned_slow || failing {
            events.next().await
        } else {
            match tokio::time::timeout_at(slow_deadline, events.next()).await {
                Ok(next) => next,
                Err(_) => {
                    warn!(
                        "kubernetes: no pod list from the API after {}s; pod labels and owners \
                         unavailable until it arrives, tracing goes on with node-side identity",
                        SLOW_SYNC_WARNING.as_secs()
                    );
                    warned_slow = true;
                    continue;
                }
            }
        };
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                let reason = explain(&e);
                if !failing {
                    warn!(
                        "kubernetes: cannot watch the pods of node {node} through the API: \
                         {reason}; tracing goes on with node-side pod identity, retrying with \
                         backoff"
                    );
                } else {
                    debug!("kubernetes: pod watch still failing: {reason}");
                }
                failing = true;
                shared.set_state(WatchState::Failing(reason));
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(30))).await;
                continue;
            }
            None => {
                // A watcher stream does not end; if it ever does, say so and keep what we have.
                warn!("kubernetes: the pod watch ended; pod metadata is no longer updated");
                shared.set_state(WatchState::Stopped("watch ended".into()));
                return;
            }
        };
        // `Init` only announces a (re-)list about to be tried; anything else is the API's answer.
        if !matches!(event, watcher::Event::Init) {
            backoff.reset();
            if failing {
                info!("kubernetes: pod watch of node {node} works again");
                failing = false;
            }
        }
        match event {
            watcher::Event::Init => listing = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(listing), Some(meta)) = (listing.as_mut(), pod_meta(&pod)) {
                    listing.insert(meta.uid.clone(), meta);
                }
            }
            watcher::Event::InitDone => {
                let listed = listing.take().unwrap_or_default();
                let count = listed.len();
                shared.replace(listed);
                shared.set_state(WatchState::Synced);
                if !synced_once {
                    info!("kubernetes: watching the pods of node {node} ({count} now)");
                    synced_once = true;
                } else {
                    debug!("kubernetes: pods of node {node} listed again ({count})");
                }
            }
            watcher::Event::Apply(pod) => {
                if let Some(meta) = pod_meta(&pod) {
                    shared.apply(meta);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(meta) = pod_meta(&pod) {
                    shared.delete(&meta.uid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn owner(kind: &str, name: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "99999999-0000-0000-0000-000000000000".into(),
            controller,
            block_owner_deletion: None,
        }
    }

    fn pod(uid: Option<&str>, owners: Vec<OwnerReference>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: uid.map(str::to_owned),
                name: Some("web-7d4b9c6f8d-x2x9z".into()),
                namespace: Some("shop".into()),
                labels: Some(
                    [
                        ("app.kubernetes.io/name", "storefront"),
                        ("pod-template-hash", "7d4b9c6f8d"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                ),
                annotations: Some([("big".to_owned(), "x".repeat(1000))].into()),
                owner_references: Some(owners),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn pod_object_to_meta() {
        let p = pod(
            Some("0A1B2C3D-0000-1111-2222-333344445555"),
            vec![
                owner("Node", "n1", None),
                owner("ReplicaSet", "web-7d4b9c6f8d", Some(true)),
            ],
        );
        let m = pod_meta(&p).unwrap();
        assert_eq!(
            m.uid, "0a1b2c3d-0000-1111-2222-333344445555",
            "cgroup spelling"
        );
        assert_eq!(m.name, "web-7d4b9c6f8d-x2x9z");
        assert_eq!(m.namespace, "shop");
        assert_eq!(
            m.labels,
            vec![
                ("app.kubernetes.io/name".to_owned(), "storefront".to_owned()),
                ("pod-template-hash".to_owned(), "7d4b9c6f8d".to_owned()),
            ]
        );
        assert_eq!(
            m.owner,
            Some(("ReplicaSet".to_owned(), "web-7d4b9c6f8d".to_owned())),
            "the controller, not the first owner"
        );
        assert_eq!(
            super::super::workload(&m),
            Some(("k8s.deployment.name", "web".to_owned()))
        );
        assert_eq!(m.service_name().as_deref(), Some("storefront"));
    }

    #[test]
    fn pod_objects_with_little_metadata() {
        // No controller among the owners: no workload is guessed.
        let m = pod_meta(&pod(
            Some("0a1b2c3d-0000-1111-2222-333344445555"),
            vec![
                owner("ReplicaSet", "x", Some(false)),
                owner("Job", "y", None),
            ],
        ))
        .unwrap();
        assert_eq!(m.owner, None);
        // No uid: nothing to key it by.
        assert_eq!(pod_meta(&pod(None, vec![])), None);
        assert_eq!(pod_meta(&pod(Some(" "), vec![])), None);
        // Nothing but a uid.
        let bare = Pod {
            metadata: ObjectMeta {
                uid: Some("0a1b2c3d-0000-1111-2222-333344445555".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let m = pod_meta(&bare).unwrap();
        assert_eq!(
            (
                m.name.as_str(),
                m.namespace.as_str(),
                m.labels.len(),
                m.owner
            ),
            ("", "", 0, None)
        );
    }

    #[test]
    fn pod_json_as_the_api_sends_it() {
        let p: Pod = serde_json::from_str(
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"db-0","namespace":"data",
                "uid":"11111111-2222-3333-4444-555555555555","labels":{"app":"db"},
                "ownerReferences":[{"apiVersion":"apps/v1","kind":"StatefulSet","name":"db",
                "uid":"66666666-2222-3333-4444-555555555555","controller":true}]},
                "spec":{"nodeName":"n1","containers":[{"name":"db","image":"postgres"}]},
                "status":{"phase":"Running"}}"#,
        )
        .unwrap();
        let m = pod_meta(&p).unwrap();
        assert_eq!(m.owner, Some(("StatefulSet".into(), "db".into())));
        assert_eq!(
            m.attributes().iter().map(|a| a.key).collect::<Vec<_>>(),
            [
                "k8s.pod.uid",
                "k8s.pod.name",
                "k8s.namespace.name",
                "k8s.statefulset.name"
            ]
        );
    }

    fn meta(uid: &str, label: &str) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: "ns".into(),
            labels: vec![("app".into(), label.into())],
            owner: None,
        }
    }

    #[test]
    fn generation_moves_only_when_attributes_could_change() {
        let w = PodWatch::default();
        let g0 = w.generation();
        w.shared.apply(meta("a", "1"));
        let g1 = w.generation();
        assert!(g1 > g0, "a new pod");
        w.shared.apply(meta("a", "1"));
        assert_eq!(w.generation(), g1, "a status-only change");
        w.shared.apply(meta("a", "2"));
        let g2 = w.generation();
        assert!(g2 > g1, "a label change");
        w.shared.delete("a");
        assert_eq!(w.generation(), g2, "a deletion keeps built resources");
        assert_eq!(w.pod("a"), None);
        w.shared
            .replace([("b".to_owned(), meta("b", "1"))].into_iter().collect());
        let g3 = w.generation();
        assert!(g3 > g2, "a re-list with a new pod");
        w.shared
            .replace([("b".to_owned(), meta("b", "1"))].into_iter().collect());
        assert_eq!(w.generation(), g3, "the same list again");
        assert_eq!(w.pod("b"), Some(meta("b", "1")));
        assert_eq!(w.len(), 1);
    }
}
