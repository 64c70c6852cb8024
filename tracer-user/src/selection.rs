//! Process selection: which processes and connections are traced.
//!
//! Rules come in an include and an exclude set, each by pid, executable name (`comm` or the
//! executable's file name), port (local or remote), cgroup path prefix, container id (or a
//! prefix of it) and `service.name`. A connection is traced when
//! - no exclude rule matches it (exclusion always wins), and
//! - for every kind of include rule that is given, one of its values matches (kinds combine
//!   with AND, values of one kind with OR; no include rules at all means everything).
//!
//! Ports are checked per connection; everything else once per process and cached by the
//! connection table. Include pids are also filtered in the kernel (`--pid`). The
//! `service.name` of a process is its resource's (the same [`ProcessCache`] logic as the
//! exported spans, Kubernetes included), looked up only when a service rule exists.

use std::collections::HashSet;

use crate::{
    config::Config,
    process::{self, ProcessCache},
};

/// One set of rules (include or exclude). Empty sets match nothing / restrict nothing.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub pids: HashSet<u32>,
    pub executables: HashSet<String>,
    pub ports: HashSet<u16>,
    pub cgroups: Vec<String>,
    pub containers: Vec<String>,
    pub services: HashSet<String>,
}

impl Rules {
    fn process_kinds_empty(&self) -> bool {
        self.pids.is_empty()
            && self.executables.is_empty()
            && self.cgroups.is_empty()
            && self.containers.is_empty()
            && self.services.is_empty()
    }
}

/// What selection needs to know about a process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessFacts {
    /// `comm` and the executable's file name.
    pub names: Vec<String>,
    /// The cgroup path of each hierarchy (`/proc/<pid>/cgroup`, third field).
    pub cgroup_paths: Vec<String>,
    pub container_id: Option<String>,
    /// Only filled when a service rule exists.
    pub service_name: Option<String>,
}

/// Include and exclude rules, plus the resource lookup for service rules.
#[derive(Default)]
pub struct Selection {
    pub include: Rules,
    pub exclude: Rules,
    services: Option<ProcessCache>,
}

impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selection")
            .field("include", &self.include)
            .field("exclude", &self.exclude)
            .finish()
    }
}

impl Selection {
    pub fn new(include: Rules, exclude: Rules) -> Self {
        let services = (!include.services.is_empty() || !exclude.services.is_empty())
            .then(|| ProcessCache::new(process::host_name(), 1024));
        Self {
            include,
            exclude,
            services,
        }
    }

    /// The rules of the configuration.
    pub fn from_config(c: &Config) -> Self {
        let lower = |v: &[String]| {
            v.iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        };
        let rules = |pids: &[u32],
                     names: &[String],
                     ports: &[u16],
                     cgroups: &[String],
                     containers: &[String],
                     services: &[String]| Rules {
            pids: pids.iter().copied().collect(),
            executables: lower(names).into_iter().collect(),
            ports: ports.iter().copied().collect(),
            cgroups: lower(cgroups),
            containers: containers.iter().map(|c| c.to_ascii_lowercase()).collect(),
            services: lower(services).into_iter().collect(),
        };
        Self::new(
            rules(
                &c.pids,
                &c.processes,
                &c.ports,
                &c.cgroups,
                &c.containers,
                &c.services,
            ),
            rules(
                &c.exclude_pids,
                &c.exclude_processes,
                &c.exclude_ports,
                &c.exclude_cgroups,
                &c.exclude_containers,
                &c.exclude_services,
            ),
        )
    }

    /// Port rules for one connection.
    pub fn ports_allowed(&self, local: u16, remote: u16) -> bool {
        if self.exclude.ports.contains(&local) || self.exclude.ports.contains(&remote) {
            return false;
        }
        self.include.ports.is_empty()
            || self.include.ports.contains(&local)
            || self.include.ports.contains(&remote)
    }

    /// Whether any rule needs to look at the process (else every process is allowed).
    pub fn has_process_rules(&self) -> bool {
        !self.include.process_kinds_empty() || !self.exclude.process_kinds_empty()
    }

    /// The decision for a live process (reads `/proc/<pid>`).
    pub fn process_allowed(&mut self, pid: u32) -> bool {
        if !self.has_process_rules() {
            return true;
        }
        let facts = self.facts(pid);
        self.decide(pid, &facts)
    }

    /// Gathers the facts the rules need.
    pub fn facts(&mut self, pid: u32) -> ProcessFacts {
        let mut facts = ProcessFacts::default();
        let needs_names =
            !self.include.executables.is_empty() || !self.exclude.executables.is_empty();
        if needs_names {
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                facts.names.push(comm.trim_end().to_owned());
            }
            if let Some(name) = std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            {
                facts.names.push(name);
            }
        }
        let needs_cgroup = !self.include.cgroups.is_empty()
            || !self.exclude.cgroups.is_empty()
            || !self.include.containers.is_empty()
            || !self.exclude.containers.is_empty();
        if needs_cgroup && let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            facts.cgroup_paths = cgroup
                .lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .map(str::to_owned)
                .collect();
            facts.container_id = process::container_id(&cgroup);
        }
        if let Some(cache) = self.services.as_mut() {
            facts.service_name = Some(cache.resource(pid).service_name.clone());
        }
        facts
    }

    /// The decision from facts already gathered (pure; unit-tested).
    pub fn decide(&self, pid: u32, facts: &ProcessFacts) -> bool {
        let (inc, exc) = (&self.include, &self.exclude);
        let cgroup_match = |prefixes: &[String]| {
            prefixes
                .iter()
                .any(|p| facts.cgroup_paths.iter().any(|path| cgroup_prefix(path, p)))
        };
        let container_match = |ids: &[String]| {
            facts
                .container_id
                .as_deref()
                .is_some_and(|id| ids.iter().any(|want| id.starts_with(want.as_str())))
        };
        let name_match = |names: &HashSet<String>| facts.names.iter().any(|n| names.contains(n));
        let service_match =
            |s: &HashSet<String>| facts.service_name.as_ref().is_some_and(|n| s.contains(n));
        let excluded = exc.pids.contains(&pid)
            || name_match(&exc.executables)
            || cgroup_match(&exc.cgroups)
            || container_match(&exc.containers)
            || service_match(&exc.services);
        if excluded {
            return false;
        }
        (inc.pids.is_empty() || inc.pids.contains(&pid))
            && (inc.executables.is_empty() || name_match(&inc.executables))
            && (inc.cgroups.is_empty() || cgroup_match(&inc.cgroups))
            && (inc.containers.is_empty() || container_match(&inc.containers))
            && (inc.services.is_empty() || service_match(&inc.services))
    }
}

/// `path` is `prefix` or below it: the text matches and ends at a path component boundary
/// (`/a/b` is under `/a`, `/ab` is not), or at a systemd name separator (`-`, `.`, `_`) so
/// that `/kubepods.slice/kubepods-besteffort` covers `.../kubepods-besteffort.slice` and
/// `.../kubepods-besteffort-pod<uid>.slice`.
fn cgroup_prefix(path: &str, prefix: &str) -> bool {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return true;
    }
    path.strip_prefix(trimmed)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '-', '.', '_']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        names: &[&str],
        cgroup: &str,
        container: Option<&str>,
        service: Option<&str>,
    ) -> ProcessFacts {
        ProcessFacts {
            names: names.iter().map(|s| s.to_string()).collect(),
            cgroup_paths: vec![cgroup.to_owned()],
            container_id: container.map(str::to_owned),
            service_name: service.map(str::to_owned),
        }
    }

    fn set<T: Clone + Eq + std::hash::Hash>(v: &[T]) -> HashSet<T> {
        v.iter().cloned().collect()
    }

    #[test]
    fn exclude_wins_and_kinds_combine() {
        let sel = Selection::new(
            Rules {
                executables: set(&["nginx".to_owned(), "python3".to_owned()]),
                cgroups: vec!["/kubepods.slice".into()],
                ..Rules::default()
            },
            Rules {
                pids: set(&[13]),
                services: set(&["noisy".to_owned()]),
                ..Rules::default()
            },
        );
        let pod = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-x.scope";
        assert!(sel.decide(10, &facts(&["nginx"], pod, None, Some("web"))));
        assert!(
            !sel.decide(13, &facts(&["nginx"], pod, None, Some("web"))),
            "pid excluded"
        );
        assert!(
            !sel.decide(11, &facts(&["nginx"], pod, None, Some("noisy"))),
            "service excluded"
        );
        assert!(
            !sel.decide(12, &facts(&["curl"], pod, None, None)),
            "name not included"
        );
        assert!(
            !sel.decide(
                12,
                &facts(&["nginx"], "/system.slice/nginx.service", None, None)
            ),
            "cgroup not included"
        );
    }

    #[test]
    fn containers_by_prefix_and_ports() {
        let id = "3f4e5d6c7b8a".repeat(5) + "0123";
        let sel = Selection::new(
            Rules {
                containers: vec![id[..12].to_owned()],
                ports: set(&[80]),
                ..Rules::default()
            },
            Rules {
                ports: set(&[22]),
                ..Rules::default()
            },
        );
        assert!(sel.decide(1, &facts(&[], "/", Some(&id), None)));
        assert!(!sel.decide(1, &facts(&[], "/", None, None)));
        assert!(sel.ports_allowed(80, 5555));
        assert!(sel.ports_allowed(5555, 80));
        assert!(!sel.ports_allowed(80, 22), "excluded port wins");
        assert!(!sel.ports_allowed(8080, 5555));
        assert!(Selection::default().ports_allowed(1, 2));
        assert!(!Selection::default().has_process_rules());
    }

    #[test]
    fn cgroup_prefixes() {
        assert!(cgroup_prefix("/kubepods.slice/a", "/kubepods.slice"));
        assert!(cgroup_prefix("/kubepods.slice", "/kubepods.slice/"));
        assert!(cgroup_prefix(
            "/kubepods.slice/kubepods-besteffort.slice/x",
            "/kubepods.slice/kubepods-besteffort"
        ));
        assert!(!cgroup_prefix("/kubepodsX/a", "/kubepods"));
        assert!(!cgroup_prefix("/ab", "/a"));
        assert!(!cgroup_prefix("/system.slice/a", "/kubepods.slice"));
        assert!(cgroup_prefix("/anything", "/"));
    }

    #[test]
    fn current_process_facts() {
        let mut sel = Selection::new(
            Rules {
                executables: set(&["nothing-like-this".to_owned()]),
                cgroups: vec!["/".into()],
                ..Rules::default()
            },
            Rules::default(),
        );
        let f = sel.facts(std::process::id());
        assert!(!f.names.is_empty());
        assert!(!f.cgroup_paths.is_empty());
        assert!(!sel.process_allowed(std::process::id()));
    }
}
