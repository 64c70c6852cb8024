//! Id hints: the values of a request that may be ids (Thrift call arguments, HTTP query values,
//! values of a JSON or form body), turned into the tokens that content inference
//! (`assemble::inference`) matches between an inbound request and the calls it causes. Part of
//! the protocol stage; hints ride on `Request::id_hints` and are never exported.
//!
//! Bodies are seen as a captured prefix (often cut mid-value), so the JSON reader here is a
//! forgiving lexer over scalars rather than a parser (serde_json rejects a truncated
//! document); query and form values go through `form_urlencoded`.

/// Most hints kept per request.
pub const MAX_HINTS: usize = 8;
/// Longest value taken as a whole token.
const MAX_VALUE: usize = 64;

/// Adds the tokens of one value: an integer's digits (any length, sign dropped); otherwise
/// its alphanumeric parts that hold a digit (two characters or more), and the whole value when
/// it looks like an identifier (3 to 64 characters of letters, digits and `-_.:@`).
pub fn push_value(value: &str, out: &mut Vec<String>) {
    let value = value.trim();
    let unsigned = value.strip_prefix('-').unwrap_or(value);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        push(unsigned, out);
        return;
    }
    for part in value.split(|c: char| !c.is_ascii_alphanumeric()) {
        if part.len() >= 2 && part.len() <= MAX_VALUE && part.bytes().any(|b| b.is_ascii_digit()) {
            push(part, out);
        }
    }
    if (3..=MAX_VALUE).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
    {
        push(value, out);
    }
}

fn push(token: &str, out: &mut Vec<String>) {
    if out.len() < MAX_HINTS && !out.iter().any(|t| t == token) {
        out.push(token.to_owned());
    }
}

/// Tokens of the values of a query string (`a=1&b=x`).
pub fn from_query(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    push_pairs(query.as_bytes(), &mut out);
    out
}

/// Adds the tokens of a request body prefix: the scalar values of a JSON document (object
/// keys are not values) or the values of a form (`a=1&b=x`). Anything else gives none. A
/// chunked body's first size line is skipped.
pub fn push_body(sample: &[u8], out: &mut Vec<String>) {
    let body = skip_chunk_size(sample.trim_ascii_start()).trim_ascii_start();
    match body.first() {
        Some(b'{' | b'[') => json_values(body, out),
        Some(_) if looks_like_form(body) => push_pairs(body, out),
        _ => {}
    }
}

fn push_pairs(data: &[u8], out: &mut Vec<String>) {
    for (_, value) in form_urlencoded::parse(data) {
        push_value(&value, out);
        if out.len() >= MAX_HINTS {
            return;
        }
    }
}

/// `1a\r\n{...` -> `{...`; anything else unchanged.
fn skip_chunk_size(data: &[u8]) -> &[u8] {
    let digits = data.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    match data[digits..].strip_prefix(b"\r\n") {
        Some(rest) if digits > 0 => rest,
        _ => data,
    }
}

/// A form body: printable, no spaces, at least one `=`.
fn looks_like_form(data: &[u8]) -> bool {
    data.contains(&b'=') && data.iter().all(|b| b.is_ascii_graphic())
}

/// Scalar values of a (possibly truncated) JSON text: strings not followed by `:`, and
/// numbers, up to the end of the first top-level value. A value cut by the end of the sample
/// is dropped.
fn json_values(data: &[u8], out: &mut Vec<String>) {
    let mut i = 0;
    let mut depth = 0usize;
    while i < data.len() && out.len() < MAX_HINTS {
        match data[i] {
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return;
                }
                i += 1;
            }
            b'"' => {
                let Some(end) = string_end(data, i + 1) else {
                    return;
                };
                let after = data[end + 1..].trim_ascii_start();
                if after.first() != Some(&b':')
                    && let Ok(text) = std::str::from_utf8(&data[i + 1..end])
                {
                    push_value(text, out);
                }
                i = end + 1;
            }
            b'-' | b'0'..=b'9' => {
                let len = data[i..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit() || b"-+.eE".contains(b))
                    .count();
                // A number running into the end of the sample may be cut short.
                if i + len < data.len()
                    && let Ok(text) = std::str::from_utf8(&data[i..i + len])
                {
                    push_value(text, out);
                }
                i += len;
            }
            _ => i += 1,
        }
    }
}

/// Index of the quote closing a string whose contents start at `from`.
fn string_end(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < data.len() {
        match data[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_tokens() {
        let tokens = |v: &str| {
            let mut out = Vec::new();
            push_value(v, &mut out);
            out
        };
        assert_eq!(tokens("7"), vec!["7"]);
        assert_eq!(tokens("-42"), vec!["42"]);
        assert_eq!(tokens("order-77"), vec!["77", "order-77"]);
        assert_eq!(tokens("alice"), vec!["alice"]);
        assert_eq!(
            tokens("3f2a9c1e-0b7d-4c55-9a1e-2f6b8d7c4e10"),
            vec![
                "3f2a9c1e",
                "0b7d",
                "4c55",
                "9a1e",
                "2f6b8d7c4e10",
                "3f2a9c1e-0b7d-4c55-9a1e-2f6b8d7c4e10"
            ]
        );
        assert!(tokens("no").is_empty());
        assert!(tokens("hello world").is_empty());
        assert_eq!(tokens("3.5"), vec!["3.5"]);
    }

    fn from_body(sample: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        push_body(sample, &mut out);
        out
    }

    #[test]
    fn json_values_not_keys() {
        assert_eq!(from_body(br#"{"number": 15}"#), vec!["15"]);
        assert_eq!(
            from_body(br#" {"user": "alice", "ids": [3, 44], "ok": true, "k\"ey": "v\"1x"}"#),
            vec!["alice", "3", "44", "1x"]
        );
        assert_eq!(from_body(b"e\r\n{\"number\":9}\r\n0\r\n\r\n"), vec!["9"]);
        assert_eq!(from_body(br#"[{"a": [1, 2]}, 3] 4"#), vec!["1", "2", "3"]);
    }

    #[test]
    fn truncated_json_keeps_only_whole_values() {
        assert_eq!(
            from_body(br#"{"a": "order-12", "b": 12345"#),
            vec!["12", "order-12"]
        );
        assert_eq!(from_body(br#"{"a": 7, "b": "ord"#), vec!["7"]);
        assert!(from_body(b"{").is_empty());
    }

    #[test]
    fn form_and_query_values() {
        assert_eq!(from_query("number=15&x=a%2D9"), vec!["15", "a-9"]);
        assert_eq!(from_body(b"id=1234&name=bob"), vec!["1234", "bob"]);
        assert!(from_body(b"plain text body").is_empty());
        assert!(from_body(b"\x00\x01binary=").is_empty());
    }

    #[test]
    fn hints_are_bounded() {
        let many: String = (10..40).map(|n| format!("v{n}={n}&")).collect();
        assert_eq!(from_query(&many).len(), MAX_HINTS);
        let json = format!("[{}1]", "1234567,".repeat(1000));
        assert_eq!(from_body(json.as_bytes()), vec!["1234567", "1"]);
    }
}
