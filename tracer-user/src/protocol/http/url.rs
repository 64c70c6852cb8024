//! Request-target helpers for the HTTP parser: split a request target into path and query,
//! template a path into a low-cardinality `http.route`, and split a `Host` header into
//! address and port. Part of `protocol::http`: parsed heads in, span attribute values out.

/// The parts of a request target the span records.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Target<'a> {
    /// Absent for authority-form (`CONNECT host:port`) and asterisk-form (`OPTIONS *`).
    pub path: Option<&'a str>,
    /// The query without its `?`; absent when empty.
    pub query: Option<&'a str>,
}

/// Splits origin-form (`/p?q`) and absolute-form (`http://h/p?q`) targets; drops fragments.
pub(super) fn split_target(target: &str) -> Target<'_> {
    let target = target.split_once('#').map_or(target, |(before, _)| before);
    let origin = match target.split_once("://") {
        Some((_, after_scheme)) => after_scheme
            .find(['/', '?'])
            .map_or("/", |i| &after_scheme[i..]),
        None if target.starts_with('/') => target,
        None => {
            return Target {
                path: None,
                query: None,
            };
        }
    };
    let (path, query) = match origin.split_once('?') {
        Some((path, query)) => (path, Some(query).filter(|q| !q.is_empty())),
        None => (origin, None),
    };
    Target {
        path: Some(if path.is_empty() { "/" } else { path }),
        query,
    }
}

/// Replaces path segments that look like identifiers with `{id}`.
pub(super) fn route(path: &str) -> String {
    let mut route = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            route.push('/');
        }
        route.push_str(if is_identifier(segment) {
            "{id}"
        } else {
            segment
        });
    }
    route
}

/// All digits, a UUID, 16+ hex digits, or an 8+ character token with letters and at least
/// three digits (`a1b2c3d4`, `order-12345`).
fn is_identifier(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
    !bytes.is_empty()
        && (digits == bytes.len()
            || is_uuid(bytes)
            || (bytes.len() >= 16 && bytes.iter().all(u8::is_ascii_hexdigit))
            || (bytes.len() >= 8 && letters > 0 && digits >= 3))
}

fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `host[:port]` or `[v6]:port` into address (brackets removed) and port when numeric.
pub(super) fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let host = host.trim();
    let (address, port) = match host.strip_prefix('[') {
        Some(v6) => {
            let (address, rest) = v6.split_once(']')?;
            (address, rest.strip_prefix(':'))
        }
        None => match host.rsplit_once(':') {
            Some((address, port)) if !address.contains(':') => (address, Some(port)),
            _ => (host, None),
        },
    };
    (!address.is_empty()).then(|| (address, port.and_then(|p| p.parse().ok())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            split_target("/a/b?x=1#frag"),
            Target {
                path: Some("/a/b"),
                query: Some("x=1")
            }
        );
        assert_eq!(
            split_target("/a?"),
            Target {
                path: Some("/a"),
                query: None
            }
        );
        assert_eq!(
            split_target("http://h:8080/p?q"),
            Target {
                path: Some("/p"),
                query: Some("q")
            }
        );
        assert_eq!(
            split_target("http://h?q"),
            Target {
                path: Some("/"),
                query: Some("q")
            }
        );
        assert_eq!(
            split_target("http://h"),
            Target {
                path: Some("/"),
                query: None
            }
        );
        assert_eq!(
            split_target("h:443"),
            Target {
                path: None,
                query: None
            }
        );
        assert_eq!(
            split_target("*"),
            Target {
                path: None,
                query: None
            }
        );
    }

    #[test]
    fn routes() {
        assert_eq!(route("/"), "/");
        assert_eq!(route("/users/12345/orders"), "/users/{id}/orders");
        assert_eq!(
            route("/items/123e4567-e89b-12d3-a456-426614174000"),
            "/items/{id}"
        );
        assert_eq!(route("/blobs/deadbeefcafebabe0011"), "/blobs/{id}");
        assert_eq!(route("/s/a1b2c3d4e5"), "/s/{id}");
        assert_eq!(route("/api/v2/health"), "/api/v2/health");
        assert_eq!(
            route("/oauth2callback/deadbeef"),
            "/oauth2callback/deadbeef"
        );
        assert_eq!(route("/a//b/"), "/a//b/");
    }

    #[test]
    fn hosts() {
        assert_eq!(split_host("example.com"), Some(("example.com", None)));
        assert_eq!(
            split_host("example.com:8080"),
            Some(("example.com", Some(8080)))
        );
        assert_eq!(split_host("[::1]:443"), Some(("::1", Some(443))));
        assert_eq!(split_host("[::1]"), Some(("::1", None)));
        assert_eq!(split_host("h:notaport"), Some(("h", None)));
        assert_eq!(split_host("::1"), Some(("::1", None)));
        assert_eq!(split_host(""), None);
        assert_eq!(split_host("[::1"), None);
    }
}
