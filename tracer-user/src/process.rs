//! The OpenTelemetry resource of each traced process, for span assembly.
//!
//! Kernel events carry only a pid. When span assembly finishes a span it asks
//! [`ProcessCache::resource`] for that pid's [`ProcessResource`]: `service.name` and the
//! `process.*`, `host.name` and `container.id` attributes, read once from `/proc/<pid>` and
//! then shared (`Arc`) by every span of the process. Entries are keyed by pid *and* start
//! time, so a pid reused by a new process gets a fresh resource; the cache is bounded (least
//! recently used entries go first). A process in a pod is also rebuilt, at its next identity
//! check, when the Kubernetes pod watch's generation has moved since its resource was built
//! (its pod arrived in the watch after it was first seen, or the pod's labels changed), so a
//! pod process first named from node-side data alone gets its labels and workload later.
//! Nothing here panics on unreadable or odd `/proc` content: whatever cannot be read is left
//! out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::k8s::Kubernetes;
use crate::span::{Attribute, ProcessResource};

/// `process.command_line` is cut at this many bytes.
const MAX_COMMAND_LINE: usize = 1024;
/// Most bytes read from any one `/proc` file.
const MAX_PROC_FILE: u64 = 256 * 1024;
/// `Attribute::key` is `&'static str`, so keys from `OTEL_RESOURCE_ATTRIBUTES` are leaked,
/// once each; these bound how much that can ever cost.
const MAX_LEAKED_KEYS: usize = 256;
const MAX_KEY_LEN: usize = 128;

/// Interpreters whose service is better named after the script or module they run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Interpreter {
    Python,
    Node,
    Ruby,
    Perl,
    Java,
    Php,
    Shell,
}

impl Interpreter {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            n if n.starts_with("python") || n.starts_with("pypy") => Self::Python,
            "node" | "nodejs" => Self::Node,
            n if n.starts_with("ruby") => Self::Ruby,
            n if n.starts_with("perl") => Self::Perl,
            "java" => Self::Java,
            n if n.starts_with("php") => Self::Php,
            "bash" | "sh" | "dash" | "zsh" | "ksh" | "ash" => Self::Shell,
            _ => return None,
        })
    }

    /// Options after which the script is not a file (inline code): no script name then.
    fn is_inline_code(self, opt: &str) -> bool {
        match self {
            Self::Python | Self::Shell => opt == "-c",
            Self::Node => matches!(opt, "-e" | "--eval" | "-p" | "--print"),
            Self::Ruby | Self::Perl => opt == "-e" || opt == "-E",
            Self::Php => opt == "-r",
            Self::Java => false,
        }
    }

    /// Options that consume the next argument.
    fn takes_value(self, opt: &str) -> bool {
        match self {
            Self::Python => matches!(opt, "-W" | "-X" | "-Q"),
            Self::Node => matches!(
                opt,
                "-r" | "--require" | "--import" | "--loader" | "-C" | "--conditions"
            ),
            Self::Ruby => matches!(opt, "-I" | "-r" | "-C"),
            Self::Perl => matches!(opt, "-I"),
            Self::Java => matches!(
                opt,
                "-cp"
                    | "-classpath"
                    | "--class-path"
                    | "-p"
                    | "--module-path"
                    | "--add-modules"
                    | "--add-opens"
                    | "--add-exports"
                    | "--add-reads"
            ),
            Self::Php => matches!(opt, "-d" | "-c" | "-z"),
            Self::Shell => matches!(opt, "-o" | "-O" | "+o" | "+O"),
        }
    }
}

/// The resource of each pid, cached.
pub struct ProcessCache {
    host_name: String,
    kubernetes: Arc<Kubernetes>,
    capacity: usize,
    proc_root: PathBuf,
    entries: HashMap<u32, Entry>,
    /// How long a cached identity is trusted without re-reading `/proc/<pid>/stat`.
    revalidate: Duration,
    /// Last-use tick -> pid, oldest first.
    by_use: BTreeMap<u64, u32>,
    tick: u64,
}

struct Entry {
    /// Tells a reused pid, or an `exec`, from the process cached.
    identity: Identity,
    /// When `identity` was last compared with `/proc` (spans are created at thousands per
    /// second; a pid cannot be reused faster than this matters).
    checked_at: Instant,
    last_use: u64,
    resource: Arc<ProcessResource>,
    /// For a process in a pod: the pod lookup's generation when the resource was built. When
    /// it has moved (the pod arrived in the API watch, or its labels changed), the resource is
    /// rebuilt at the next check of the identity.
    pod_generation: Option<u64>,
}

impl ProcessCache {
    /// A cache of at most `capacity` processes (at least one), reading the real `/proc`.
    pub fn new(host_name: String, capacity: usize) -> Self {
        let mut cache = Self::with_proc_root(host_name, capacity, PathBuf::from("/proc"));
        cache.revalidate = Duration::from_secs(2);
        cache
    }

    /// Like [`ProcessCache::new`], reading `proc_root` instead of `/proc` (for tests, or an
    /// agent that sees the host's `/proc` mounted elsewhere).
    pub fn with_proc_root(host_name: String, capacity: usize, proc_root: PathBuf) -> Self {
        Self {
            host_name,
            kubernetes: Arc::new(Kubernetes::default()),
            capacity: capacity.max(1),
            proc_root,
            entries: HashMap::new(),
            revalidate: Duration::ZERO,
            by_use: BTreeMap::new(),
            tick: 0,
        }
    }

    /// Adds Kubernetes identity (`k8s.*` attributes, pod-derived `service.name`) to the
    /// resources of processes in pod cgroups.
    pub fn with_kubernetes(mut self, kubernetes: Arc<Kubernetes>) -> Self {
        self.kubernetes = kubernetes;
        self
    }

    /// The resource of `pid`. `/proc/<pid>/stat` is read at most every 2 s per pid (with `new`) to
    /// check that the pid still names the cached process; the rest of `/proc/<pid>` is read
    /// only on a miss, or for a pod process whose pod metadata changed since. A process that has exited before it was ever seen gets a
    /// minimal resource (`unknown_service:pid-<pid>`), which is not cached; one that exited
    /// after being seen keeps its cached resource until evicted.
    pub fn resource(&mut self, pid: u32) -> Arc<ProcessResource> {
        self.tick += 1;
        if let Some(entry) = self.entries.get_mut(&pid)
            && entry.checked_at.elapsed() < self.revalidate
        {
            self.by_use.remove(&entry.last_use);
            entry.last_use = self.tick;
            self.by_use.insert(self.tick, pid);
            return entry.resource.clone();
        }
        let dir = self.proc_root.join(pid.to_string());
        let identity = identity(&dir);
        let generation = self.kubernetes.generation();
        let same_process = self
            .entries
            .get(&pid)
            .is_some_and(|e| identity.as_ref().is_none_or(|id| *id == e.identity));
        if let Some(entry) = self.entries.get_mut(&pid)
            && same_process
            // A pod process whose pod's metadata changed is rebuilt (unless it is gone).
            && (identity.is_none() || entry.pod_generation.is_none_or(|g| g == generation))
        {
            self.by_use.remove(&entry.last_use);
            entry.last_use = self.tick;
            entry.checked_at = Instant::now();
            self.by_use.insert(self.tick, pid);
            return entry.resource.clone();
        }
        let built = identity.and_then(|id| {
            Some((
                id,
                read_resource(&dir, pid, &self.host_name, &self.kubernetes)?,
            ))
        });
        let Some((identity, (resource, in_pod))) = built else {
            if same_process && let Some(entry) = self.entries.get(&pid) {
                // Gone while its pod's resource was being rebuilt: what it had stands.
                return entry.resource.clone();
            }
            return Arc::new(minimal_resource(pid, &self.host_name));
        };
        let resource = Arc::new(resource);
        if let Some(old) = self.entries.remove(&pid) {
            self.by_use.remove(&old.last_use);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.entries.insert(
            pid,
            Entry {
                identity,
                checked_at: Instant::now(),
                last_use: self.tick,
                resource: resource.clone(),
                pod_generation: in_pod.then_some(generation),
            },
        );
        self.by_use.insert(self.tick, pid);
        resource
    }
}

/// This machine's host name: `/proc/sys/kernel/hostname`, else `gethostname(2)`, else
/// `"unknown"`.
pub fn host_name() -> String {
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim();
        if !name.is_empty() {
            return name.to_owned();
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match String::from_utf8_lossy(&buf[..len]) {
        name if rc == 0 && !name.is_empty() => name.into_owned(),
        _ => "unknown".to_owned(),
    }
}

fn minimal_resource(pid: u32, host_name: &str) -> ProcessResource {
    ProcessResource {
        pid,
        service_name: format!("unknown_service:pid-{pid}"),
        attributes: vec![
            Attribute::int("process.pid", i64::from(pid)),
            Attribute::str("host.name", host_name),
        ],
    }
}

/// Reads the resource from `/proc/<pid>`, and whether the process is in a pod; `None` if the
/// process is gone.
fn read_resource(
    dir: &Path,
    pid: u32,
    host_name: &str,
    kubernetes: &Kubernetes,
) -> Option<(ProcessResource, bool)> {
    // `comm` is readable for as long as the pid exists, zombies included.
    let comm = read_capped(&dir.join("comm")).ok()?;
    let comm = String::from_utf8_lossy(&comm)
        .trim_end_matches('\n')
        .to_owned();
    let args: Vec<String> = read_capped(&dir.join("cmdline"))
        .map(|raw| split_nul(&raw))
        .unwrap_or_default();
    let exe_path = std::fs::read_link(dir.join("exe")).ok().map(|p| {
        p.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_owned()
    });
    let exe_name = exe_path
        .as_deref()
        .map(base_name)
        .filter(|n| !n.is_empty())
        .unwrap_or(&comm)
        .to_owned();
    let env = read_capped(&dir.join("environ"))
        .map(|raw| split_nul(&raw))
        .unwrap_or_default();
    // The first definition wins, as with getenv(3).
    let env_var = |name: &str| {
        env.iter()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let user_attrs = env_var("OTEL_RESOURCE_ATTRIBUTES")
        .map(parse_resource_attributes)
        .unwrap_or_default();

    let cgroup = read_capped(&dir.join("cgroup"))
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .unwrap_or_default();
    let pod = kubernetes.identify(dir, &cgroup, &env);
    let in_pod = !pod.attributes.is_empty();
    let service_name = env_var("OTEL_SERVICE_NAME")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            user_attrs
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .filter(|s| !s.is_empty())
        .or(pod.service_name)
        .unwrap_or_else(|| service_from_command(&args, &exe_name));

    let mut attributes = vec![
        Attribute::int("process.pid", i64::from(pid)),
        Attribute::str("process.executable.name", exe_name),
    ];
    if let Some(path) = exe_path {
        attributes.push(Attribute::str("process.executable.path", path));
    }
    if !args.is_empty() {
        attributes.push(Attribute::str("process.command_line", command_line(&args)));
    }
    attributes.push(Attribute::str("host.name", host_name));
    if let Some(id) = container_id(&cgroup) {
        attributes.push(Attribute::str("container.id", id));
    }
    attributes.extend(pod.attributes);
    // What the process says about itself wins over what was detected.
    for (key, value) in user_attrs {
        if key == "service.name" {
            continue;
        }
        let Some(key) = static_key(&key) else {
            continue;
        };
        attributes.retain(|a| a.key != key);
        attributes.push(Attribute::str(key, value));
    }
    Some((
        ProcessResource {
            pid,
            service_name,
            attributes,
        },
        in_pod,
    ))
}

/// Which process a pid currently names: its start time (field 22 of `stat`) changes when
/// the pid is reused, its `comm` (field 2) when it calls `exec`.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    start_time: u64,
    comm: Vec<u8>,
}

/// The [`Identity`] in `<dir>/stat`; `None` if the process is gone.
fn identity(dir: &Path) -> Option<Identity> {
    let stat = read_capped(&dir.join("stat")).ok()?;
    // `comm` is in parentheses and may itself contain spaces and parentheses.
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = stat.get(open + 1..close)?.to_vec();
    let after_comm = String::from_utf8_lossy(stat.get(close + 1..)?).into_owned();
    // Field 3 is the first after the parenthesis.
    let start_time = after_comm
        .split_ascii_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()?;
    Some(Identity { start_time, comm })
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_PROC_FILE)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// NUL-separated strings (`cmdline`, `environ`), without the empty trailing one.
fn split_nul(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `app.py` -> `app`; a leading dot is not an extension.
fn strip_extension(name: &str) -> &str {
    match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    }
}

/// `service.name` when the process sets none: the script or module an interpreter runs,
/// else the executable's name.
fn service_from_command(args: &[String], exe_name: &str) -> String {
    let argv0 = args
        .first()
        .map(|a| base_name(a.split(' ').next().unwrap_or(a)));
    let interpreter = argv0
        .and_then(Interpreter::from_name)
        .or_else(|| Interpreter::from_name(exe_name));
    if let Some(interp) = interpreter
        && let Some(name) = script_name(interp, args.get(1..).unwrap_or_default())
    {
        return name;
    }
    if !exe_name.is_empty() {
        return exe_name.to_owned();
    }
    argv0
        .filter(|a| !a.is_empty())
        .unwrap_or("unknown_service")
        .to_owned()
}

/// What an interpreter runs, from its arguments (after `argv[0]`).
fn script_name(interp: Interpreter, args: &[String]) -> Option<String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let arg = arg.as_str();
        if interp.is_inline_code(arg) {
            return None;
        }
        match (interp, arg) {
            (Interpreter::Python, "-m") => return args.next().filter(|m| !m.is_empty()).cloned(),
            (Interpreter::Java, "-jar") | (Interpreter::Php, "-f") => {
                return args
                    .next()
                    .map(|f| strip_extension(base_name(f)).to_owned());
            }
            // `java -m module/main.Class`: the module.
            (Interpreter::Java, "-m" | "--module") => {
                return args
                    .next()
                    .and_then(|m| m.split('/').next())
                    .map(str::to_owned);
            }
            // Everything after `--` is the script and its arguments.
            (_, "--") => {
                return args
                    .next()
                    .map(|f| strip_extension(base_name(f)).to_owned());
            }
            (_, a) if interp.takes_value(a) => {
                args.next();
            }
            (_, a)
                if a.starts_with('-') || (interp == Interpreter::Shell && a.starts_with('+')) => {}
            // Java's main class is not a file name: `com.example.App` stays as it is.
            (Interpreter::Java, class) => return Some(class.to_owned()),
            (_, script) => {
                let name = strip_extension(base_name(script));
                return (!name.is_empty()).then(|| name.to_owned());
            }
        }
    }
    None
}

/// Arguments joined by spaces, cut at [`MAX_COMMAND_LINE`] bytes on a character boundary.
fn command_line(args: &[String]) -> String {
    let mut line = args.join(" ");
    if line.len() > MAX_COMMAND_LINE {
        let mut end = MAX_COMMAND_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// `key1=value1,key2=value2` with percent-encoded values (as the OpenTelemetry SDKs read
/// `OTEL_RESOURCE_ATTRIBUTES`). Entries without `=` or with an empty key are skipped.
fn parse_resource_attributes(raw: &str) -> Vec<(String, String)> {
    raw.split(',')
        .filter_map(|entry| {
            let (key, value) = entry.split_once('=')?;
            let key = percent_decode(key.trim());
            (!key.is_empty()).then(|| (key, percent_decode(value.trim())))
        })
        .collect()
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The container id in a `/proc/<pid>/cgroup` file: the last 64-hex-digit name component
/// in the first cgroup path that has one. Covers docker (`/docker/<id>`,
/// `docker-<id>.scope`), containerd (`cri-containerd-<id>.scope`), cri-o (`crio-<id>`),
/// podman (`libpod-<id>.scope`) and kubepods hierarchies.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        // `hierarchy-id:controllers:path`; the path may itself contain ':'.
        let path = line.splitn(3, ':').nth(2)?;
        path.split(|c: char| !c.is_ascii_hexdigit())
            .rfind(|run| run.len() == 64)
            .map(str::to_owned)
    })
}

/// A `&'static str` equal to `key`, leaking each distinct key once; `None` once
/// [`MAX_LEAKED_KEYS`] are leaked or when the key is longer than [`MAX_KEY_LEN`].
fn static_key(key: &str) -> Option<&'static str> {
    static KEYS: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);
    let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&k) = keys.get(key) {
        return Some(k);
    }
    if keys.len() >= MAX_LEAKED_KEYS || key.len() > MAX_KEY_LEN {
        tracing::debug!(
            key,
            "resource attribute dropped: too many distinct keys or key too long"
        );
        return None;
    }
    let leaked: &'static str = Box::leak(key.to_owned().into_boxed_str());
    keys.insert(leaked);
    Some(leaked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{AttrValue, find};
    use std::fs;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const HEX2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    /// A fake `/proc` in a fresh temporary directory, removed on drop.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("tracer-proc-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            FakeProc(dir)
        }

        /// A process with `cmdline` args, `environ` variables and a `cgroup` file.
        fn add(&self, pid: u32, start: u64, comm: &str, args: &[&str], env: &[&str], cgroup: &str) {
            let dir = self.0.join(pid.to_string());
            fs::create_dir_all(&dir).unwrap();
            let stat = format!(
                "{pid} ({comm}) S 1 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 10"
            );
            fs::write(dir.join("stat"), stat).unwrap();
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            let nul = |items: &[&str]| {
                items
                    .iter()
                    .flat_map(|s| [s.as_bytes(), b"\0"].concat())
                    .collect::<Vec<u8>>()
            };
            fs::write(dir.join("cmdline"), nul(args)).unwrap();
            fs::write(dir.join("environ"), nul(env)).unwrap();
            fs::write(dir.join("cgroup"), cgroup).unwrap();
        }

        fn cache(&self, capacity: usize) -> ProcessCache {
            ProcessCache::with_proc_root("testhost".into(), capacity, self.0.clone())
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn attr(r: &ProcessResource, key: &str) -> Option<String> {
        match find(&r.attributes, key)? {
            AttrValue::Str(s) => Some(s.to_string()),
            AttrValue::Int(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    }

    fn named(args: &[&str], exe: &str) -> String {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        service_from_command(&args, exe)
    }

    #[test]
    fn service_name_from_command_line() {
        assert_eq!(
            named(&["python3", "-m", "http.server", "8000"], "python3.12"),
            "http.server"
        );
        assert_eq!(
            named(
                &["/usr/bin/python3", "-u", "-W", "ignore", "/srv/app/main.py"],
                "python3"
            ),
            "main"
        );
        assert_eq!(
            named(&["python3", "-c", "print(1)"], "python3.12"),
            "python3.12"
        );
        assert_eq!(named(&["python3"], "python3.12"), "python3.12");
        assert_eq!(
            named(&["node", "--require", "otel.js", "dist/server.js"], "node"),
            "server"
        );
        assert_eq!(
            named(
                &[
                    "java",
                    "-Xmx1g",
                    "-cp",
                    "a.jar:b.jar",
                    "-jar",
                    "/opt/shop.jar"
                ],
                "java"
            ),
            "shop"
        );
        assert_eq!(
            named(&["java", "-cp", "lib/*", "com.example.App"], "java"),
            "com.example.App"
        );
        assert_eq!(
            named(&["ruby", "-I", "lib", "bin/rails", "server"], "ruby3.2"),
            "rails"
        );
        assert_eq!(named(&["perl", "-w", "tool.pl"], "perl"), "tool");
        assert_eq!(
            named(&["php", "-d", "x=1", "-f", "index.php"], "php8.2"),
            "index"
        );
        assert_eq!(
            named(&["bash", "-o", "pipefail", "./deploy.sh"], "bash"),
            "deploy"
        );
        assert_eq!(named(&["sh", "-c", "exec foo"], "dash"), "dash");
        // argv[0] rewritten, interpreter recognised from the executable.
        assert_eq!(named(&["gunicorn-master", "wsgi.py"], "python3.11"), "wsgi");
        // Not an interpreter: the executable, not argv[0].
        assert_eq!(named(&["nginx: worker process"], "nginx"), "nginx");
        assert_eq!(named(&[], "kworker"), "kworker");
    }

    #[test]
    fn resource_attributes_are_url_decoded() {
        let parsed = parse_resource_attributes(
            "service.name=checkout%20api, deployment.environment=prod ,bad,=x,team=a%2Cb%3Dc,pct=100%",
        );
        let expected = [
            ("service.name", "checkout api"),
            ("deployment.environment", "prod"),
            ("team", "a,b=c"),
            ("pct", "100%"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(parsed, expected);
        assert_eq!(percent_decode("caf%C3%A9%zz%4"), "café%zz%4");
    }

    #[test]
    fn container_ids() {
        let cases = [
            (format!("12:pids:/docker/{HEX}\n0::/\n"), Some(HEX)),
            (format!("0::/system.slice/docker-{HEX}.scope\n"), Some(HEX)),
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-{HEX}.scope"
                ),
                Some(HEX),
            ),
            (
                format!(
                    "0::/kubepods/besteffort/pod0a1b2c3d-0000-1111-2222-333344445555/crio-{HEX}"
                ),
                Some(HEX),
            ),
            (
                format!("0::/kubepods/burstable/pod{HEX2}/{HEX}\n"),
                Some(HEX),
            ),
            (
                format!("0::/user.slice/user-1000.slice/user@1000.service/libpod-{HEX}.scope:rest"),
                Some(HEX),
            ),
            (
                "0::/user.slice/user-1000.slice/session-2.scope\n".to_owned(),
                None,
            ),
            (format!("0::/too/short/{}\n", &HEX[..63]), None),
            (format!("0::/too/long/{HEX}0\n"), None),
            (String::new(), None),
            ("garbage without colons".to_owned(), None),
        ];
        for (cgroup, expected) in cases {
            assert_eq!(container_id(&cgroup).as_deref(), expected, "{cgroup}");
        }
    }

    #[test]
    fn fake_proc_resource() {
        let proc = FakeProc::new("resource");
        proc.add(
            100,
            5000,
            "python3",
            &["/usr/bin/python3", "-m", "http.server", "8000"],
            &["PATH=/bin", "OTEL_RESOURCE_ATTRIBUTES=service.version=1.2,host.name=override,deployment.environment=stag%20ing"],
            &format!("0::/system.slice/docker-{HEX}.scope\n"),
        );
        let mut cache = proc.cache(10);
        let r = cache.resource(100);
        assert_eq!(r.pid, 100);
        assert_eq!(r.service_name, "http.server");
        assert_eq!(attr(&r, "process.pid").as_deref(), Some("100"));
        // No exe link in the fake tree: comm stands in.
        assert_eq!(
            attr(&r, "process.executable.name").as_deref(),
            Some("python3")
        );
        assert_eq!(attr(&r, "process.executable.path"), None);
        assert_eq!(
            attr(&r, "process.command_line").as_deref(),
            Some("/usr/bin/python3 -m http.server 8000")
        );
        assert_eq!(attr(&r, "container.id").as_deref(), Some(HEX));
        assert_eq!(attr(&r, "service.version").as_deref(), Some("1.2"));
        assert_eq!(
            attr(&r, "deployment.environment").as_deref(),
            Some("stag ing")
        );
        assert_eq!(attr(&r, "host.name").as_deref(), Some("override"));
        assert_eq!(
            r.attributes.iter().filter(|a| a.key == "host.name").count(),
            1
        );
        assert_eq!(
            attr(&r, "service.name"),
            None,
            "service.name lives in its own field"
        );
        assert!(Arc::ptr_eq(&r, &cache.resource(100)), "cached");
    }

    #[test]
    fn service_name_precedence() {
        let proc = FakeProc::new("precedence");
        let attrs = "OTEL_RESOURCE_ATTRIBUTES=service.name=from%2Dattrs";
        proc.add(
            1,
            1,
            "app",
            &["./app"],
            &[attrs, "OTEL_SERVICE_NAME=from-env"],
            "",
        );
        proc.add(2, 1, "app", &["./app"], &[attrs], "");
        proc.add(3, 1, "app", &["./app"], &["OTEL_SERVICE_NAME=", "X=1"], "");
        let mut cache = proc.cache(10);
        assert_eq!(cache.resource(1).service_name, "from-env");
        assert_eq!(cache.resource(2).service_name, "from-attrs");
        assert_eq!(cache.resource(3).service_name, "app");
        assert_eq!(
            attr(&cache.resource(3), "host.name").as_deref(),
            Some("testhost")
        );
    }

    /// A pod lookup the test fills while the cache runs.
    #[derive(Default)]
    struct LatePods {
        pod: Mutex<Option<crate::k8s::PodMeta>>,
        generation: std::sync::atomic::AtomicU64,
    }

    impl crate::k8s::PodLookup for LatePods {
        fn pod(&self, uid: &str) -> Option<crate::k8s::PodMeta> {
            self.pod.lock().unwrap().clone().filter(|p| p.uid == uid)
        }
        fn generation(&self) -> u64 {
            self.generation.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[test]
    fn pod_processes_are_rebuilt_when_the_pod_watch_learns_more() {
        const UID: &str = "0a1b2c3d-0000-1111-2222-333344445555";
        let proc = FakeProc::new("latepod");
        let pod_cgroup = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{HEX}.scope\n",
            UID.replace('-', "_")
        );
        proc.add(
            10,
            1,
            "web",
            &["./web"],
            &["POD_NAME=web-abc-1"],
            &pod_cgroup,
        );
        proc.add(
            11,
            1,
            "host",
            &["./host"],
            &[],
            "0::/system.slice/x.service\n",
        );
        let pods = Arc::new(LatePods::default());
        let kubernetes =
            crate::k8s::Kubernetes::new(Some("n1".into()), "n1".into()).with_lookup(pods.clone());
        let mut cache = proc.cache(10).with_kubernetes(Arc::new(kubernetes));
        // Not in the watch yet: node-side identity, at once.
        let first = cache.resource(10);
        assert_eq!(first.service_name, "web");
        assert_eq!(attr(&first, "k8s.pod.name").as_deref(), Some("web-abc-1"));
        assert_eq!(attr(&first, "k8s.deployment.name"), None);
        let host = cache.resource(11);
        assert!(Arc::ptr_eq(&first, &cache.resource(10)), "nothing changed");

        *pods.pod.lock().unwrap() = Some(crate::k8s::PodMeta {
            uid: UID.into(),
            name: "web-abc-1".into(),
            namespace: "shop".into(),
            labels: vec![
                ("app.kubernetes.io/name".into(), "storefront".into()),
                ("pod-template-hash".into(), "abc".into()),
            ],
            owner: Some(("ReplicaSet".into(), "web-abc".into())),
        });
        pods.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let second = cache.resource(10);
        assert_eq!(
            second.service_name, "storefront",
            "label after the watch caught up"
        );
        assert_eq!(attr(&second, "k8s.deployment.name").as_deref(), Some("web"));
        assert_eq!(attr(&second, "k8s.namespace.name").as_deref(), Some("shop"));
        assert!(Arc::ptr_eq(&second, &cache.resource(10)), "rebuilt once");
        assert!(
            Arc::ptr_eq(&host, &cache.resource(11)),
            "a process outside pods is not rebuilt"
        );
        // Its pod's metadata changes again, but the process is gone: what it had stands.
        pods.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        fs::remove_dir_all(proc.0.join("10")).unwrap();
        assert!(Arc::ptr_eq(&second, &cache.resource(10)));
    }

    #[test]
    fn odd_proc_contents_do_not_panic() {
        let proc = FakeProc::new("odd");
        proc.add(7, 1, "we(i)rd) name", &[], &[], "");
        // Invalid UTF-8 everywhere, a stat without enough fields.
        let dir = proc.0.join("7");
        fs::write(dir.join("cmdline"), b"\xff\xfe\0-m\0").unwrap();
        fs::write(dir.join("environ"), b"OTEL_SERVICE_NAME\0=\0\xff").unwrap();
        fs::write(dir.join("cgroup"), b"\xff:\xff:\xff").unwrap();
        let mut cache = proc.cache(4);
        let r = cache.resource(7);
        assert_eq!(r.pid, 7);
        let id = identity(&dir).unwrap();
        assert_eq!(
            (id.start_time, &id.comm[..]),
            (1, &b"we(i)rd) name"[..]),
            "comm with parentheses and spaces"
        );
        // An unparsable stat: the cached entry stands; a new cache cannot tell the process.
        fs::write(dir.join("stat"), "7 (x) S 1").unwrap();
        assert!(Arc::ptr_eq(&r, &cache.resource(7)));
        assert_eq!(
            proc.cache(4).resource(7).service_name,
            "unknown_service:pid-7"
        );
        // A pid directory that cannot be read at all.
        assert_eq!(
            cache.resource(4_000_000).service_name,
            "unknown_service:pid-4000000"
        );
    }

    #[test]
    fn pid_reuse_gets_a_fresh_entry() {
        let proc = FakeProc::new("reuse");
        proc.add(42, 1000, "old", &["old"], &[], "");
        let mut cache = proc.cache(10);
        let first = cache.resource(42);
        assert_eq!(first.service_name, "old");
        proc.add(42, 2000, "new", &["new"], &[], "");
        let second = cache.resource(42);
        assert_eq!(second.service_name, "new");
        assert_eq!(cache.entries.len(), 1);
        // Same process, after exec: comm changes, start time does not.
        proc.add(42, 2000, "exec'd", &["exec'd"], &[], "");
        let second = cache.resource(42);
        assert_eq!(second.service_name, "exec'd");
        // The process exits: its spans still get its resource.
        fs::remove_dir_all(proc.0.join("42")).unwrap();
        assert!(Arc::ptr_eq(&second, &cache.resource(42)));
    }

    #[test]
    fn exited_before_seen_is_minimal_and_not_cached() {
        let proc = FakeProc::new("exited");
        let mut cache = proc.cache(10);
        let r = cache.resource(99);
        assert_eq!(r.service_name, "unknown_service:pid-99");
        assert_eq!(attr(&r, "process.pid").as_deref(), Some("99"));
        assert_eq!(attr(&r, "host.name").as_deref(), Some("testhost"));
        assert!(cache.entries.is_empty());
        // Once it shows up (a new process with that pid), it gets a real resource.
        proc.add(99, 1, "late", &["late"], &[], "");
        assert_eq!(cache.resource(99).service_name, "late");
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let proc = FakeProc::new("lru");
        for pid in 1..=3 {
            proc.add(pid, 1, &format!("p{pid}"), &[&format!("p{pid}")], &[], "");
        }
        let mut cache = proc.cache(2);
        let one = cache.resource(1);
        let two = cache.resource(2);
        assert!(Arc::ptr_eq(&one, &cache.resource(1))); // 1 is now more recent than 2
        cache.resource(3); // evicts 2
        assert_eq!(cache.entries.len(), 2);
        assert_eq!(cache.by_use.len(), 2);
        assert!(Arc::ptr_eq(&one, &cache.resource(1)));
        assert!(
            !Arc::ptr_eq(&two, &cache.resource(2)),
            "2 was evicted and rebuilt"
        );
        assert!(
            !cache.entries.contains_key(&3),
            "3 was then the least recently used"
        );
    }

    #[test]
    fn command_line_is_capped() {
        let long = "é".repeat(1000);
        let line = command_line(&["prog".to_owned(), long]);
        assert!(line.len() <= MAX_COMMAND_LINE && line.len() > MAX_COMMAND_LINE - 4);
    }

    #[test]
    fn leaked_keys_are_reused() {
        let a = static_key("tracer.test.key").unwrap();
        let b = static_key("tracer.test.key").unwrap();
        assert!(std::ptr::eq(a, b));
        assert_eq!(static_key(&"k".repeat(MAX_KEY_LEN + 1)), None);
    }

    #[test]
    fn current_process() {
        let mut cache = ProcessCache::new(host_name(), 8);
        let pid = std::process::id();
        let r = cache.resource(pid);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(attr(&r, "process.executable.path").as_deref(), exe.to_str());
        let exe_name = exe.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            attr(&r, "process.executable.name").as_deref(),
            Some(exe_name)
        );
        if std::env::var_os("OTEL_SERVICE_NAME").is_none()
            && std::env::var_os("OTEL_RESOURCE_ATTRIBUTES").is_none()
        {
            assert_eq!(r.service_name, exe_name);
        }
        assert_eq!(attr(&r, "process.pid"), Some(pid.to_string()));
        assert!(attr(&r, "process.command_line").is_some_and(|c| c.contains(exe_name)));
        assert!(!host_name().is_empty());
        assert_eq!(attr(&r, "host.name"), Some(host_name()));
    }

    #[test]
    fn child_with_otel_service_name() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .env("OTEL_SERVICE_NAME", "foo")
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.namespace=shop%2Fcheckout",
            )
            .spawn()
            .expect("spawn sleep");
        // `spawn` returns once the kernel has switched the child to its new memory, a moment
        // before it records where the environment lies in it: wait for that.
        let environ = format!("/proc/{}/environ", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while fs::read(&environ).is_ok_and(|e| e.is_empty()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut cache = ProcessCache::new("h".into(), 8);
        let r = cache.resource(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(r.service_name, "foo");
        assert_eq!(
            attr(&r, "process.executable.name").as_deref(),
            Some("sleep")
        );
        assert_eq!(attr(&r, "process.command_line").as_deref(), Some("sleep 5"));
        assert_eq!(
            attr(&r, "service.namespace").as_deref(),
            Some("shop/checkout")
        );
        // Reaped: the cached resource still answers for its pid.
        assert!(Arc::ptr_eq(&r, &cache.resource(child.id())));
    }
}
