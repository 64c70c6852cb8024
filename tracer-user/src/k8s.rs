//! Kubernetes identity of a traced process: `k8s.pod.uid`, `k8s.pod.name`,
//! `k8s.namespace.name`, `k8s.node.name`, the owning workload (`k8s.deployment.name`, ...)
//! and the `service.name` users expect.
//!
//! What the node itself shows comes first, and is all that runs without an API:
//! - the pod uid from the process's cgroup path (`kubepods-…-pod<uid>.slice` with the uid's
//!   dashes as underscores under the systemd driver, `kubepods/…/pod<uid>/` under cgroupfs);
//! - the pod name from the process's environment (`POD_NAME`, set by the downward API by
//!   convention, else `HOSTNAME`, which the kubelet sets to the pod name), else the
//!   container's `/etc/hostname` seen through `/proc/<pid>/root`; a name equal to the node's
//!   host name is a `hostNetwork` pod's and is not used;
//! - the namespace from `POD_NAMESPACE`, else the service account's namespace file in the
//!   container (`/proc/<pid>/root/var/run/secrets/kubernetes.io/serviceaccount/namespace`);
//! - the node name from the agent's own `NODE_NAME` (the DaemonSet sets it from
//!   `spec.nodeName`).
//!
//! Labels and owners come from the API: [`watch::PodWatch`], one cached watch of the pods on
//! this node, implements [`PodLookup`] by pod uid and is registered with
//! [`Kubernetes::with_lookup`] by [`Kubernetes::start`] when the agent runs in a cluster (or
//! has a `KUBECONFIG`), knows `NODE_NAME` and `--k8s-api` is not off. [`PodMeta`] is what the
//! watch keeps for one pod and [`PodMeta::attributes`] maps it to attributes; where the API
//! knows the pod, its name and namespace win over the node-side guesses. A pod the watch does
//! not know (yet) gets the node-side identity at once, nothing waits for the API.
//!
//! `service.name` for a pod process: `OTEL_SERVICE_NAME` / `service.name` in
//! `OTEL_RESOURCE_ATTRIBUTES` of the process, then the pod label `app.kubernetes.io/name`,
//! then the workload name, then what the command line gives (see `process.rs`).

pub mod watch;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::span::Attribute;

/// Pod metadata from the API, as far as attributes need it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub labels: Vec<(String, String)>,
    /// Controller owner reference: kind and name (`ReplicaSet`, `web-7d4b9c6f8d`).
    pub owner: Option<(String, String)>,
}

/// Pod metadata by pod uid (a cached watch of the pods on this node). Lookups are made
/// while spans are assembled: they must answer from memory, never wait on the network.
pub trait PodLookup: Send + Sync {
    fn pod(&self, uid: &str) -> Option<PodMeta>;

    /// Changes whenever a pod is added or what [`PodLookup::pod`] returns for it changes, so
    /// that resources built from an older answer (or from none) can be rebuilt.
    fn generation(&self) -> u64 {
        0
    }
}

/// The workload attribute key and name of a pod's controller. A ReplicaSet whose name is
/// `<deployment>-<pod-template-hash>` (the hash is also the pod's `pod-template-hash` label)
/// names its Deployment. (A CronJob would need the Job object: not guessed from names.)
pub fn workload(meta: &PodMeta) -> Option<(&'static str, String)> {
    let (kind, name) = meta.owner.as_ref()?;
    let label = |k: &str| {
        meta.labels
            .iter()
            .find(|(l, _)| l == k)
            .map(|(_, v)| v.as_str())
    };
    Some(match kind.as_str() {
        "ReplicaSet" => {
            match label("pod-template-hash").and_then(|h| name.strip_suffix(h)?.strip_suffix('-')) {
                Some(deployment) => ("k8s.deployment.name", deployment.to_owned()),
                None => ("k8s.replicaset.name", name.clone()),
            }
        }
        "StatefulSet" => ("k8s.statefulset.name", name.clone()),
        "DaemonSet" => ("k8s.daemonset.name", name.clone()),
        "Job" => ("k8s.job.name", name.clone()),
        _ => return None,
    })
}

impl PodMeta {
    /// Attributes from the API's view of the pod (name, namespace, uid, workload).
    pub fn attributes(&self) -> Vec<Attribute> {
        let mut out = vec![
            Attribute::str("k8s.pod.uid", self.uid.clone()),
            Attribute::str("k8s.pod.name", self.name.clone()),
            Attribute::str("k8s.namespace.name", self.namespace.clone()),
        ];
        if let Some((key, name)) = workload(self) {
            out.push(Attribute::str(key, name));
        }
        out
    }

    /// `service.name` from the pod: the `app.kubernetes.io/name` label, else the workload.
    pub fn service_name(&self) -> Option<String> {
        self.labels
            .iter()
            .find(|(k, v)| k == "app.kubernetes.io/name" && !v.is_empty())
            .map(|(_, v)| v.clone())
            .or_else(|| workload(self).map(|(_, n)| n))
    }
}

/// What the agent knows about its Kubernetes node.
pub struct Kubernetes {
    node_name: Option<String>,
    /// The node's host name, to recognise `hostNetwork` pods' host names.
    host_name: String,
    lookup: Option<Arc<dyn PodLookup>>,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Self {
            node_name: None,
            host_name: crate::process::host_name(),
            lookup: None,
        }
    }
}

/// The Kubernetes identity derived for one process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodIdentity {
    pub attributes: Vec<Attribute>,
    /// `service.name` from the pod (label or workload), used when the process sets none.
    pub service_name: Option<String>,
}

/// Whether to watch the API, from the `--k8s-api` switch, the node name and how the API
/// would be reached: `Err` says why not (for the start-up line).
pub fn api_decision(
    enabled: bool,
    node_name: Option<&str>,
    in_cluster: bool,
    kubeconfig: bool,
) -> Result<(), &'static str> {
    if !enabled {
        Err("the API watch is off (--k8s-api=false)")
    } else if !in_cluster && !kubeconfig {
        Err("no API access (neither KUBERNETES_SERVICE_HOST nor KUBECONFIG is set)")
    } else if node_name.is_none() {
        Err("NODE_NAME is not set (the DaemonSet sets it from spec.nodeName)")
    } else {
        Ok(())
    }
}

impl Kubernetes {
    /// `NODE_NAME` from the agent's environment, no API.
    pub fn from_environment() -> Arc<Kubernetes> {
        let node_name = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
        Arc::new(Kubernetes {
            node_name,
            ..Default::default()
        })
    }

    /// `NODE_NAME` from the agent's environment and, when [`api_decision`] allows (`api` is
    /// the `--k8s-api` switch), the watch of this node's pods, started in the background on
    /// the current tokio runtime: this returns at once, whether or not the API answers. Logs
    /// one line saying which.
    pub fn start(api: bool) -> Arc<Kubernetes> {
        let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        let base = Self::from_environment();
        let (in_cluster, kubeconfig) = (env("KUBERNETES_SERVICE_HOST"), env("KUBECONFIG"));
        let decision = api_decision(api, base.node_name(), in_cluster, kubeconfig);
        match (base.node_name(), decision) {
            (Some(node), Ok(())) => {
                let (watch, _task) = watch::PodWatch::spawn(node, None);
                tracing::info!(
                    "kubernetes: node {node}, pod labels and owners from a watch of its pods"
                );
                let mut k = Kubernetes::new(base.node_name.clone(), base.host_name.clone());
                k.lookup = Some(Arc::new(watch));
                return Arc::new(k);
            }
            (Some(node), Err(why)) => {
                tracing::info!("kubernetes: node {node}; {why}: node-side pod identity only");
            }
            // With the API at hand and the watch wanted, a missing NODE_NAME is a mistake.
            (None, Err(why)) if api && (in_cluster || kubeconfig) => {
                tracing::warn!("kubernetes: {why}: no pod watch, node-side pod identity only");
            }
            (None, _) => {}
        }
        base
    }

    pub fn new(node_name: Option<String>, host_name: String) -> Self {
        Self {
            node_name,
            host_name,
            lookup: None,
        }
    }

    pub fn with_lookup(mut self, lookup: Arc<dyn PodLookup>) -> Self {
        self.lookup = Some(lookup);
        self
    }

    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// Whether pod metadata is read from the API (a lookup is registered).
    pub fn api_watch(&self) -> bool {
        self.lookup.is_some()
    }

    /// The lookup's [`PodLookup::generation`]; 0 without one.
    pub fn generation(&self) -> u64 {
        self.lookup.as_ref().map_or(0, |l| l.generation())
    }

    /// The identity of the process whose `/proc` directory is `dir`, given its `cgroup` file
    /// text and environment (`KEY=value` strings). Empty when the cgroup is no pod's.
    pub fn identify(&self, dir: &Path, cgroup: &str, env: &[String]) -> PodIdentity {
        let Some(uid) = pod_uid(cgroup) else {
            return PodIdentity::default();
        };
        let env_var = |name: &str| {
            env.iter()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let root = dir.join("root");
        let host_named =
            |n: &String| Some(n.as_str()) == self.node_name.as_deref() || *n == self.host_name;
        let api = self.lookup.as_ref().and_then(|l| l.pod(&uid));
        let pod_name = api
            .as_ref()
            .map(|p| p.name.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| {
                env_var("POD_NAME")
                    .map(str::to_owned)
                    .or_else(|| {
                        env_var("HOSTNAME")
                            .map(str::to_owned)
                            .filter(|n| !host_named(n))
                    })
                    .or_else(|| read_small(&root.join("etc/hostname")).filter(|n| !host_named(n)))
            });
        let namespace = api
            .as_ref()
            .map(|p| p.namespace.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| {
                env_var("POD_NAMESPACE")
                    .map(str::to_owned)
                    // `/var/run` is often an absolute symlink to `/run`, which would resolve in the
                    // agent's root, not the container's: read both spellings.
                    .or_else(|| {
                        read_small(&root.join("run/secrets/kubernetes.io/serviceaccount/namespace"))
                    })
                    .or_else(|| {
                        read_small(
                            &root.join("var/run/secrets/kubernetes.io/serviceaccount/namespace"),
                        )
                    })
            });
        let mut attributes = vec![Attribute::str("k8s.pod.uid", uid)];
        if let Some(name) = pod_name {
            attributes.push(Attribute::str("k8s.pod.name", name));
        }
        if let Some(ns) = namespace {
            attributes.push(Attribute::str("k8s.namespace.name", ns));
        }
        if let Some(node) = &self.node_name {
            attributes.push(Attribute::str("k8s.node.name", node.clone()));
        }
        if let Some((key, name)) = api.as_ref().and_then(workload) {
            attributes.push(Attribute::str(key, name));
        }
        PodIdentity {
            attributes,
            service_name: api.as_ref().and_then(PodMeta::service_name),
        }
    }
}

/// First line of a small file, trimmed; `None` if unreadable or empty.
fn read_small(path: &PathBuf) -> Option<String> {
    use std::io::Read;
    let mut buf = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(4096)
        .read_to_string(&mut buf)
        .ok()?;
    let line = buf.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// The pod uid in a `/proc/<pid>/cgroup` text: `pod<uid>` in a `kubepods` path, the uid's
/// dashes written as underscores under the systemd cgroup driver.
pub fn pod_uid(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        if !path.contains("kubepods") {
            return None;
        }
        path.split('/').find_map(|component| {
            let component = component.strip_suffix(".slice").unwrap_or(component);
            let at = component.rfind("pod")?;
            let uid = component[at + 3..].replace('_', "-").to_ascii_lowercase();
            is_uuid(&uid).then_some(uid)
        })
    })
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{AttrValue, find};

    const UID: &str = "0a1b2c3d-0000-1111-2222-333344445555";

    #[test]
    fn pod_uids_from_cgroups() {
        let systemd = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_0000_1111_2222_333344445555.slice/cri-containerd-abc.scope\n";
        let cgroupfs =
            "12:memory:/kubepods/besteffort/pod0a1b2c3d-0000-1111-2222-333344445555/0123\n";
        let guaranteed =
            "0::/kubepods.slice/kubepods-pod0a1b2c3d_0000_1111_2222_333344445555.slice/x\n";
        for c in [systemd, cgroupfs, guaranteed] {
            assert_eq!(pod_uid(c).as_deref(), Some(UID), "{c}");
        }
        assert_eq!(
            pod_uid("0::/system.slice/pod0a1b2c3d-0000-1111-2222-333344445555\n"),
            None,
            "not kubepods"
        );
        assert_eq!(pod_uid("0::/kubepods.slice/kubepods-podzz.slice\n"), None);
        assert_eq!(pod_uid(""), None);
    }

    fn attr(id: &PodIdentity, key: &str) -> Option<String> {
        match find(&id.attributes, key)? {
            AttrValue::Str(s) => Some(s.to_string()),
            _ => None,
        }
    }

    #[test]
    fn node_side_identity() {
        let k = Kubernetes::new(Some("node-1".into()), "node-1".into());
        let dir = std::env::temp_dir().join(format!("k8s-ident-{}", std::process::id()));
        let sa = dir.join("root/var/run/secrets/kubernetes.io/serviceaccount");
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::create_dir_all(dir.join("root/etc")).unwrap();
        std::fs::write(sa.join("namespace"), "shop").unwrap();
        std::fs::write(dir.join("root/etc/hostname"), "web-7d4b9c6f8d-x2x9z\n").unwrap();
        let cg = format!("0::/kubepods/pod{UID}/c\n");
        let id = k.identify(&dir, &cg, &[]);
        assert_eq!(attr(&id, "k8s.pod.uid").as_deref(), Some(UID));
        assert_eq!(
            attr(&id, "k8s.pod.name").as_deref(),
            Some("web-7d4b9c6f8d-x2x9z")
        );
        assert_eq!(attr(&id, "k8s.namespace.name").as_deref(), Some("shop"));
        assert_eq!(attr(&id, "k8s.node.name").as_deref(), Some("node-1"));
        // Downward API variables win; a hostNetwork pod's HOSTNAME (the node's) is not a pod name.
        let env = vec![
            "POD_NAME=from-env".to_owned(),
            "POD_NAMESPACE=ns-env".to_owned(),
        ];
        let id = k.identify(&dir, &cg, &env);
        assert_eq!(attr(&id, "k8s.pod.name").as_deref(), Some("from-env"));
        assert_eq!(attr(&id, "k8s.namespace.name").as_deref(), Some("ns-env"));
        std::fs::write(dir.join("root/etc/hostname"), "node-1\n").unwrap();
        let id = k.identify(&dir, &cg, &["HOSTNAME=node-1".to_owned()]);
        assert_eq!(attr(&id, "k8s.pod.name"), None);
        // Not a pod: nothing.
        assert_eq!(
            k.identify(&dir, "0::/user.slice\n", &env),
            PodIdentity::default()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn api_watch_only_with_an_api_and_a_node() {
        assert_eq!(api_decision(true, Some("n1"), true, false), Ok(()));
        assert_eq!(api_decision(true, Some("n1"), false, true), Ok(()));
        let why = |r: Result<(), &str>| r.unwrap_err().to_owned();
        assert!(why(api_decision(false, Some("n1"), true, true)).contains("--k8s-api=false"));
        assert!(why(api_decision(true, Some("n1"), false, false)).contains("KUBECONFIG"));
        assert!(why(api_decision(true, None, true, true)).contains("NODE_NAME"));
        // Outside a cluster nothing is started, lookups are absent.
        let k = Kubernetes::new(Some("n1".into()), "h".into());
        assert!(!k.api_watch());
        assert_eq!(k.generation(), 0);
    }

    struct Fixed(PodMeta);
    impl PodLookup for Fixed {
        fn pod(&self, uid: &str) -> Option<PodMeta> {
            (uid == self.0.uid).then(|| self.0.clone())
        }
    }

    fn meta(labels: &[(&str, &str)], owner: Option<(&str, &str)>) -> PodMeta {
        PodMeta {
            uid: UID.into(),
            name: "web-7d4b9c6f8d-x2x9z".into(),
            namespace: "shop".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            owner: owner.map(|(k, n)| (k.to_string(), n.to_string())),
        }
    }

    #[test]
    fn pod_object_to_attributes() {
        let m = meta(
            &[("pod-template-hash", "7d4b9c6f8d")],
            Some(("ReplicaSet", "web-7d4b9c6f8d")),
        );
        assert_eq!(
            workload(&m),
            Some(("k8s.deployment.name", "web".to_owned()))
        );
        assert_eq!(
            m.service_name().as_deref(),
            Some("web"),
            "workload when no name label"
        );
        let labelled = meta(
            &[("app.kubernetes.io/name", "storefront")],
            Some(("ReplicaSet", "web-abc")),
        );
        assert_eq!(
            workload(&labelled),
            Some(("k8s.replicaset.name", "web-abc".to_owned()))
        );
        assert_eq!(labelled.service_name().as_deref(), Some("storefront"));
        assert_eq!(
            workload(&meta(&[], Some(("StatefulSet", "db")))),
            Some(("k8s.statefulset.name", "db".into()))
        );
        assert_eq!(
            workload(&meta(&[], Some(("DaemonSet", "agent")))),
            Some(("k8s.daemonset.name", "agent".into()))
        );
        assert_eq!(
            workload(&meta(&[], Some(("Job", "backup-2891")))),
            Some(("k8s.job.name", "backup-2891".into()))
        );
        assert_eq!(workload(&meta(&[], Some(("Node", "n")))), None);
        assert_eq!(meta(&[], None).service_name(), None);

        // Through the lookup: API values beat node-side guesses.
        let k = Kubernetes::new(None, "h".into()).with_lookup(Arc::new(Fixed(m)));
        let id = k.identify(
            Path::new("/nonexistent"),
            &format!("0::/kubepods/pod{UID}/c\n"),
            &["POD_NAME=other".into()],
        );
        assert_eq!(
            attr(&id, "k8s.pod.name").as_deref(),
            Some("web-7d4b9c6f8d-x2x9z")
        );
        assert_eq!(attr(&id, "k8s.deployment.name").as_deref(), Some("web"));
        assert_eq!(id.service_name.as_deref(), Some("web"));
    }
}
