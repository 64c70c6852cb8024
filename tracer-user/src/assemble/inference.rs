//! Parent inference for a CLIENT span when neither propagated context nor its own thread
//! says which request caused it: thread pools (the request is read by one thread and
//! handled by a worker) and event loops (one thread serves many requests at once).
//!
//! Candidates are the SERVER spans of the same process in progress when the CLIENT request
//! starts. In order:
//! 1. `content` (0.95): exactly one candidate shares an id-like token (something with a digit)
//!    with the outbound request — ids copied from the inbound path into the outbound one.
//! 2. `thread_pool` (0.9): this worker thread already made a call for a request that is still
//!    in progress: a pool worker handles one request at a time. (Content goes first: a worker
//!    can pick up its next request before another thread has written the previous response.)
//! 3. `process` (0.8): exactly one request is in progress in the process.
//! 4. `thread_pool` (0.7): exactly one candidate is not yet claimed by another worker thread.
//! 5. otherwise `ambiguous`: the oldest unclaimed candidate with confidence 0.8/n (n >= 2).
//!
//! A worker thread's link claims the request for that thread (steps 1 and 4); threads that
//! serve requests themselves (event loops) never claim. The caller turns a guess below the
//! confidence threshold into a root with a span link to the candidate.

use super::Assembler;

/// A proposed parent.
pub(super) struct Guess {
    pub parent: u64,
    pub method: &'static str,
    pub confidence: f64,
}

impl Assembler {
    /// Proposes a parent for the CLIENT span `handle`, or `None` when its process serves
    /// nothing at that time.
    pub(super) fn infer_parent(&mut self, handle: u64) -> Option<Guess> {
        let span = self.spans.get(&handle)?;
        let (pid, tid, start) = (span.pid, span.tid, span.start_ns);
        let tokens = span.tokens.clone();
        let thread = (pid, tid);
        let is_worker = !self.serving.contains_key(&thread);

        let candidates: Vec<u64> = self
            .serving_by_pid
            .get(&pid)
            .map(|list| {
                list.iter()
                    .copied()
                    .filter(|h| self.in_progress(*h, start))
                    .collect()
            })
            .unwrap_or_default();
        if candidates.is_empty() {
            return None;
        }
        let sharing: Vec<u64> = if tokens.is_empty() {
            Vec::new()
        } else {
            candidates
                .iter()
                .copied()
                .filter(|h| {
                    self.spans
                        .get(h)
                        .is_some_and(|s| s.tokens.iter().any(|t| tokens.contains(t)))
                })
                .collect()
        };
        // Content first: a pool worker may pick up its next request before the previous one's
        // response is written by another thread, so its claim can be stale.
        if let [one] = sharing.as_slice() {
            let parent = *one;
            if is_worker {
                self.claim(thread, parent);
            }
            return Some(Guess {
                parent,
                method: "content",
                confidence: 0.95,
            });
        }
        if let Some(&claimed) = self.claims.get(&thread) {
            if self.in_progress(claimed, start) {
                return Some(Guess {
                    parent: claimed,
                    method: "thread_pool",
                    confidence: 0.9,
                });
            }
            self.claims.remove(&thread);
            self.claimed.remove(&claimed);
        }

        let unclaimed: Vec<u64> = candidates
            .iter()
            .copied()
            .filter(|h| !self.claimed.contains_key(h))
            .collect();
        let guess = match (candidates.as_slice(), unclaimed.as_slice()) {
            ([one], _) => Guess {
                parent: *one,
                method: "process",
                confidence: 0.8,
            },
            (_, [one]) if is_worker => Guess {
                parent: *one,
                method: "thread_pool",
                confidence: 0.7,
            },
            _ => {
                let pool = if unclaimed.is_empty() {
                    &candidates
                } else {
                    &unclaimed
                };
                let oldest = pool
                    .iter()
                    .copied()
                    .min_by_key(|h| self.spans.get(h).map_or(u64::MAX, |s| s.start_ns))
                    .unwrap_or(candidates[0]);
                // Indistinguishable candidates: below any sensible threshold by design.
                Guess {
                    parent: oldest,
                    method: "ambiguous",
                    confidence: 0.8 / pool.len() as f64,
                }
            }
        };
        if is_worker && guess.method != "ambiguous" {
            self.claim(thread, guess.parent);
        }
        Some(guess)
    }

    /// Records that worker `thread` handles the request `parent` (replacing its old claim).
    fn claim(&mut self, thread: (u32, u32), parent: u64) {
        if let Some(old) = self.claims.insert(thread, parent) {
            self.claimed.remove(&old);
        }
        self.claimed.insert(parent, thread);
    }

    /// Whether the span had started and not yet ended at kernel time `at`.
    fn in_progress(&self, handle: u64, at: u64) -> bool {
        self.spans
            .get(&handle)
            .is_some_and(|s| s.start_ns <= at && s.end_ns.is_none_or(|end| end >= at))
    }

    /// Forgets a finished SERVER span in the process-wide and claim indexes.
    pub(super) fn forget_server(&mut self, pid: u32, handle: u64) {
        if let Some(list) = self.serving_by_pid.get_mut(&pid) {
            list.retain(|h| *h != handle);
            if list.is_empty() {
                self.serving_by_pid.remove(&pid);
            }
        }
        if let Some(thread) = self.claimed.remove(&handle) {
            self.claims.remove(&thread);
        }
    }
}

/// Id-like tokens of a request (parts of its path or name that contain a digit), used to
/// match an outbound request to the inbound one it copies an id from.
pub(super) fn id_tokens(name: &str, path: Option<&str>) -> Vec<String> {
    let mut tokens: Vec<String> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .chain(
            path.into_iter()
                .flat_map(|p| p.split(|c: char| !c.is_ascii_alphanumeric())),
        )
        .filter(|t| t.len() >= 2 && t.bytes().any(|b| b.is_ascii_digit()))
        .map(str::to_owned)
        .collect();
    tokens.sort();
    tokens.dedup();
    tokens.truncate(8);
    tokens
}

#[cfg(test)]
mod tests {
    use super::id_tokens;

    #[test]
    fn tokens_are_the_id_like_parts() {
        assert_eq!(
            id_tokens("GET /fizz/{id}", Some("/fizz/12345")),
            vec!["12345"]
        );
        assert_eq!(id_tokens("req-17/echo", None), vec!["17"]);
        assert!(id_tokens("GET /api/users", Some("/api/users")).is_empty());
        assert_eq!(
            id_tokens("x", Some("/v2/orders/ab12cd")),
            vec!["ab12cd", "v2"]
        );
    }
}
