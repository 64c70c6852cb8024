//! A fake Kubernetes API server, enough of one for the agent's pod watch.
//!
//! [`FakeKubeApi::start`] serves plain HTTP on a loopback port, from a private tokio runtime
//! like the OTLP receiver's:
//! - `GET /api/v1/pods?...` lists the pods as a `PodList` with a `resourceVersion`, filtered
//!   by a `fieldSelector` of the form `spec.nodeName=<node>` as the real API server does;
//! - the same with `watch=true` streams watch events, one JSON object a line
//!   (`{"type":"ADDED","object":{...}}`), starting after the `resourceVersion` asked for;
//! - anything else is a 404 `Status`; with [`FakeKubeApi::forbid`] every request gets the 403
//!   `Status` of a service account without RBAC.
//!
//! Tests change the pods with [`FakeKubeApi::add`], [`FakeKubeApi::modify`] and
//! [`FakeKubeApi::delete`], which open watches see at once, read every request line received
//! with [`FakeKubeApi::requests`], and point a client at the server with the kubeconfig file
//! [`FakeKubeApi::write_kubeconfig`] writes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A pod object as the API returns it: `uid`, `name`, `namespace`, `spec.nodeName`, labels and
/// an optional controller owner `(kind, name)`.
pub fn pod_json(
    uid: &str,
    name: &str,
    namespace: &str,
    node: &str,
    labels: &[(&str, &str)],
    controller: Option<(&str, &str)>,
) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    let mut metadata = json!({
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "labels": labels,
        "annotations": {"kubernetes.io/psp": "restricted"},
        "creationTimestamp": "2026-01-01T00:00:00Z",
    });
    if let Some((kind, owner)) = controller {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "apps/v1",
            "kind": kind,
            "name": owner,
            "uid": "00000000-0000-4000-8000-000000000001",
            "controller": true,
            "blockOwnerDeletion": true,
        }]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "example.com/app:1"}],
        },
        "status": {"phase": "Running"},
    })
}

#[derive(Default)]
struct State {
    /// Pods by uid, each with its `metadata.resourceVersion`.
    pods: BTreeMap<String, Value>,
    resource_version: u64,
    /// Every event so far, to resume a watch from a resource version: (version, node, line).
    events: Vec<(u64, String, Bytes)>,
    /// Open watches: the node they select (if any) and where their lines go.
    watches: Vec<(Option<String>, mpsc::UnboundedSender<Bytes>)>,
    /// `METHOD path?query` of every request, as received (query still percent-encoded).
    requests: Vec<String>,
    forbidden: bool,
}

fn node_of(pod: &Value) -> String {
    pod["spec"]["nodeName"].as_str().unwrap_or("").to_owned()
}

impl State {
    fn event(&mut self, kind: &str, mut pod: Value) {
        self.resource_version += 1;
        let rv = self.resource_version;
        pod["metadata"]["resourceVersion"] = Value::from(rv.to_string());
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_owned();
        if kind == "DELETED" {
            self.pods.remove(&uid);
        } else {
            self.pods.insert(uid, pod.clone());
        }
        let node = node_of(&pod);
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": pod})).unwrap();
        line.push(b'\n');
        let line = Bytes::from(line);
        self.watches.retain(|(selected, tx)| {
            if selected.as_ref().is_some_and(|n| *n != node) {
                return !tx.is_closed();
            }
            tx.send(line.clone()).is_ok()
        });
        self.events.push((rv, node, line));
    }
}

/// Body of a watch response: the lines sent to the channel, until the server drops it.
struct WatchBody(mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(hyper::body::Frame::data(l))))
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_reply(status: u16, value: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(value).unwrap())).boxed())
        .expect("valid response")
}

fn status(code: u16, reason: &str, message: &str) -> hyper::Response<Body> {
    json_reply(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }),
    )
}

/// Query parameters of a request line or URI, percent-decoded (`+` as a space).
pub fn query_params(uri: &str) -> Vec<(String, String)> {
    let Some((_, query)) = uri.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(
    state: &Mutex<State>,
    req: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let uri = req.uri().to_string();
    let mut st = state.lock().unwrap();
    st.requests.push(format!("{} {uri}", req.method()));
    if st.forbidden {
        return status(
            403,
            "Forbidden",
            "pods is forbidden: User \"system:serviceaccount:tracer:tracer\" cannot list \
             resource \"pods\" in API group \"\" at the cluster scope",
        );
    }
    if req.method() != hyper::Method::GET || req.uri().path() != "/api/v1/pods" {
        return status(404, "NotFound", "the fake API serves only GET /api/v1/pods");
    }
    let params = query_params(&uri);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let node = match param("fieldSelector") {
        None | Some("") => None,
        Some(sel) => match sel.strip_prefix("spec.nodeName=") {
            Some(node) if !node.contains(',') => Some(node.to_owned()),
            _ => {
                return status(
                    400,
                    "BadRequest",
                    &format!("unsupported fieldSelector {sel}"),
                );
            }
        },
    };
    let selected = |n: &str| node.as_deref().is_none_or(|want| want == n);
    if matches!(param("watch"), Some("true" | "1")) {
        let from: u64 = param("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(st.resource_version);
        let (tx, rx) = mpsc::unbounded_channel();
        for (rv, n, line) in &st.events {
            if *rv > from && selected(n) {
                let _ = tx.send(line.clone());
            }
        }
        st.watches.push((node, tx));
        return hyper::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(WatchBody(rx)))
            .expect("valid response");
    }
    let items: Vec<Value> = st
        .pods
        .values()
        .filter(|p| selected(&node_of(p)))
        .cloned()
        .collect();
    json_reply(
        200,
        &json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": st.resource_version.to_string()},
            "items": items,
        }),
    )
}

/// A running fake API server. Dropping it shuts it down (open watches end).
pub struct FakeKubeApi {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeKubeApi {
    /// Listens on `127.0.0.1:0`.
    pub fn start() -> FakeKubeApi {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("fake-kube-api")
            .build()
            .expect("build fake API runtime");
        let state = Arc::new(Mutex::new(State::default()));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind fake API");
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let reply = handle(&state, &req);
                        async move { Ok::<_, Infallible>(reply) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeKubeApi {
            state,
            addr,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes `dir/kubeconfig`, a kubeconfig whose current context is this server (with a
    /// bearer token, as a service account would send), and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    \
             namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    \
             token: fake-token\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// A new pod (`ADDED`).
    pub fn add(&self, pod: Value) {
        self.state.lock().unwrap().event("ADDED", pod);
    }

    /// A changed pod (`MODIFIED`), e.g. new labels.
    pub fn modify(&self, pod: Value) {
        self.state.lock().unwrap().event("MODIFIED", pod);
    }

    /// The pod with this uid is gone (`DELETED`); no-op if unknown.
    pub fn delete(&self, uid: &str) {
        let mut st = self.state.lock().unwrap();
        if let Some(pod) = st.pods.get(uid).cloned() {
            st.event("DELETED", pod);
        }
    }

    /// From now on answer every request with 403 Forbidden (`true`), or serve again.
    pub fn forbid(&self, forbidden: bool) {
        self.state.lock().unwrap().forbidden = forbidden;
    }

    /// Ends every open watch stream, as an API server does at its timeout; clients resume.
    pub fn close_watches(&self) {
        self.state.lock().unwrap().watches.clear();
    }

    /// Watches open now.
    pub fn open_watches(&self) -> usize {
        let mut st = self.state.lock().unwrap();
        st.watches.retain(|(_, tx)| !tx.is_closed());
        st.watches.len()
    }

    /// `METHOD path?query` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.state.lock().unwrap().watches.clear();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(
            query_params("/api/v1/pods?&fieldSelector=spec.nodeName%3Dn-1&watch=true&x"),
            vec![
                ("fieldSelector".to_owned(), "spec.nodeName=n-1".to_owned()),
                ("watch".to_owned(), "true".to_owned()),
                ("x".to_owned(), String::new()),
            ]
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz+b"), "%zz b");
    }
}
