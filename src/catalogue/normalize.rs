//! Request-path and template normalisation.
//!
//! Both sides are brought to the same form before matchit sees them: literal
//! text lower-cased, `//` runs collapsed, no trailing `/`. Templates also get
//! their parameters renamed by position, so `{queueId}` and `{id}` at the same
//! place are one router entry.

use std::cell::RefCell;
use std::fmt::Write as _;

/// Paths up to this length reuse the thread's buffer without growing it.
const BUF_INITIAL: usize = 256;
/// A buffer grown past this by a huge path is dropped afterwards, so one
/// oversized request does not pin memory in every worker thread.
const BUF_KEEP_MAX: usize = 8 * 1024;

thread_local! {
    static BUF: RefCell<String> = RefCell::new(String::with_capacity(BUF_INITIAL));
}

/// Writes the normalised, lower-cased form of a raw request path into `out`;
/// `clean` is [`Scan::clean`], which the caller has already worked out.
///
/// Empty segments are skipped, which collapses `//` runs and drops a trailing
/// `/`; the result always starts with `/`. Nothing is percent-decoded, so
/// `%3A` can never become a verb colon. Lower-casing is ASCII only, so param
/// values keep their UTF-8 bytes valid.
fn normalize_into(path: &str, clean: bool, out: &mut String) {
    out.clear();
    if clean {
        // The common case: one copy, no per-segment work.
        out.push_str(path);
    } else {
        for segment in path.split('/') {
            if !segment.is_empty() {
                out.push('/');
                out.push_str(segment);
            }
        }
        if out.is_empty() {
            out.push('/');
        }
    }
    out.make_ascii_lowercase();
}

/// What one pass over a raw path finds.
struct Scan {
    /// It has an ASCII upper-case letter.
    upper: bool,
    /// Already normal apart from case: starts with `/`, no `//`, no trailing `/`
    /// (except `/` itself).
    clean: bool,
}

/// Tests a path for upper-case letters and `//` in one pass, eight bytes a word.
///
/// One pass costs less than `str::contains("//")` (its SIMD searcher's set-up,
/// about 89 instructions on a 45-byte path) beside a separate upper-case pass.
fn scan(path: &str) -> Scan {
    const ONES: u64 = u64::MAX / 0xff;
    const HIGH: u64 = ONES * 0x80;
    // High bit of each byte set exactly where that byte is in 'A'..='Z' (first) and
    // where it is '/' (second). Upper case: the low seven bits plus a bias carry into
    // the high bit at 'A' and again past 'Z', and bytes with the high bit set
    // (non-ASCII) are left out. Slash: a zero-byte test on `word ^ '/'…`. No byte
    // overflows into the next.
    let flags = |word: u64| {
        let low = word & (ONES * 0x7f);
        let from_a = low + ONES * u64::from(0x80 - b'A');
        let past_z = low + ONES * u64::from(0x80 - b'Z' - 1);
        let x = word ^ (ONES * u64::from(b'/'));
        let slash = !(((x & (ONES * 0x7f)) + ONES * 0x7f) | x) & HIGH;
        (from_a & !past_z & !word & HIGH, slash)
    };
    let bytes = path.as_bytes();
    let load = |chunk: &[u8]| <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes);
    let (mut upper, mut doubles) = (0, 0);
    match bytes.len().checked_sub(8) {
        // Shorter than a word: one word, zero-padded (zeros are neither).
        None => {
            let word = bytes
                .iter()
                .rev()
                .fold(0, |word, &b| (word << 8) | u64::from(b));
            let (u, slash) = flags(word);
            upper = u;
            doubles = slash & (slash << 8);
        }
        Some(last) => {
            // `carry`: the high bit of byte 0 set if the byte before the word is '/'.
            let mut carry = 0;
            for chunk in bytes.chunks_exact(8) {
                let (u, slash) = flags(load(chunk));
                upper |= u;
                doubles |= slash & ((slash << 8) | carry);
                carry = slash >> 56;
            }
            if bytes.len() % 8 != 0 {
                // The tail is the last eight bytes again (overlapping; a byte seen
                // twice changes nothing) rather than a padded copy, a `memcpy` call.
                let (u, slash) = flags(load(&bytes[last..]));
                let before = last.checked_sub(1).and_then(|i| bytes.get(i));
                upper |= u;
                doubles |= slash & ((slash << 8) | (u64::from(before == Some(&b'/')) << 7));
            }
        }
    }
    Scan {
        upper: upper != 0,
        clean: doubles == 0 && path.starts_with('/') && (path.len() == 1 || !path.ends_with('/')),
    }
}

/// Runs `f` on the normalised path without allocating. A path that is already
/// normal (clean and without upper-case letters, as most SDK paths are) is
/// passed as it is; any other is normalised into a reused thread-local buffer,
/// or a fresh `String` if the buffer is unavailable (re-entrant call, or a
/// thread-local destructor running), so it never panics.
pub(super) fn with_normalized<R>(path: &str, f: impl Fn(&str) -> R) -> R {
    let Scan { upper, clean } = scan(path);
    if clean && !upper {
        // Copying and lower-casing was about a quarter of `classify`.
        return f(path);
    }
    let reused = BUF.try_with(|cell| {
        let mut buf = cell.try_borrow_mut().ok()?;
        normalize_into(path, clean, &mut buf);
        let result = f(&buf);
        if buf.capacity() > BUF_KEEP_MAX {
            *buf = String::with_capacity(BUF_INITIAL);
        }
        Some(result)
    });
    match reused {
        Ok(Some(result)) => result,
        _ => {
            let mut own = String::with_capacity(path.len() + 1);
            normalize_into(path, clean, &mut own);
            f(&own)
        }
    }
}

/// The raw value of the first `api-version` parameter of a query string.
pub(super) fn api_version(query: &str) -> Option<&str> {
    // A byte walk: `split('&')` + `split_once('=')` cost about 490 instructions per query.
    const KEY: &[u8] = b"api-version=";
    let bytes = query.as_bytes();
    let mut start = 0;
    while start <= bytes.len() {
        let rest = &bytes[start..];
        let end = rest.iter().position(|&b| b == b'&').unwrap_or(rest.len());
        let pair = &rest[..end];
        if pair.len() >= KEY.len() && pair[..KEY.len()].eq_ignore_ascii_case(KEY) {
            // Both ends are ASCII delimiters, so char boundaries.
            return query.get(start + KEY.len()..start + end);
        }
        start += end + 1;
    }
    None
}

/// A template compiled to the router's form.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct CompiledTemplate {
    /// Lower-cased, parameters renamed `{p0}`, `{p1}`, ... (`{*pN}` for a catch-all).
    pub(super) key: String,
    /// Bit i set: parameter i is a whole segment or begins one (`/{id}`,
    /// `/{id}:verb`), so its value can never start with `:` (that would be an
    /// empty id before a verb). Catch-alls and parameters past 63 are left out.
    pub(super) segment_start_params: u64,
}

/// Checks a catalogue path template and compiles it to its router key.
///
/// The checks reject templates that could never match a normalised request
/// path (trailing `/`, `//`, query) and anything matchit would read as
/// syntax other than `{name}` / `{*name}` parameters.
pub(super) fn compile_template(template: &str) -> Result<CompiledTemplate, String> {
    if !template.starts_with('/') {
        return Err("path must start with '/'".into());
    }
    if template.len() > 1 && template.ends_with('/') {
        return Err("path must not end with '/' (request paths lose their trailing '/')".into());
    }
    if template.contains("//") {
        return Err("path must not contain '//' (request paths have '//' collapsed)".into());
    }
    if let Some(c) = template
        .chars()
        .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("path must not contain {c:?}"));
    }
    let mut key = String::with_capacity(template.len());
    let mut params = 0usize;
    let mut segment_start = 0u64;
    let mut catch_all = false;
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        let (literal, tail) = rest.split_at(open);
        if catch_all && !literal.is_empty() {
            return Err("a catch-all {*name} must end the path".into());
        }
        key.push_str(&literal.to_ascii_lowercase());
        if tail.starts_with('}') {
            return Err("unmatched '}'".into());
        }
        let close = tail.find('}').ok_or_else(|| "unmatched '{'".to_string())?;
        let inner = &tail[1..close];
        let (star, name) = match inner.strip_prefix('*') {
            Some(name) => (true, name),
            None => (false, inner),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "invalid parameter {{{inner}}}: use {{name}} or {{*name}} with letters, digits, '_' or '-'"
            ));
        }
        if catch_all {
            return Err("a catch-all {*name} must end the path".into());
        }
        let n = params;
        params += 1;
        if !star && key.ends_with('/') && n < 64 {
            segment_start |= 1 << n;
        }
        if star {
            catch_all = true;
            let _ = write!(key, "{{*p{n}}}");
        } else {
            let _ = write!(key, "{{p{n}}}");
        }
        rest = &tail[close + 1..];
    }
    if catch_all && !rest.is_empty() {
        return Err("a catch-all {*name} must end the path".into());
    }
    key.push_str(&rest.to_ascii_lowercase());
    Ok(CompiledTemplate {
        key,
        segment_start_params: segment_start,
    })
}

/// Normalises an `[[api]]` prefix: lower-cased, no trailing `/`.
pub(super) fn compile_prefix(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') || prefix.len() < 2 {
        return Err("prefix must start with '/' and name at least one segment".into());
    }
    if prefix.ends_with('/') || prefix.contains("//") {
        return Err("prefix must not end with '/' or contain '//'".into());
    }
    if prefix
        .chars()
        .any(|c| matches!(c, '?' | '#' | '{' | '}') || c.is_whitespace() || c.is_control())
    {
        return Err("prefix must be a plain path (no '{', '?', '#' or spaces)".into());
    }
    Ok(prefix.to_ascii_lowercase())
}

/// Whether the normalised `path` starts with `prefix` on a segment boundary:
/// `/chat` matches `/chat`, `/chat/x` and `/chat:verb`, not `/chatty`.
pub(super) fn prefix_matches(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        with_normalized(p, str::to_owned)
    }

    /// The copying path, whatever the input.
    fn copied(p: &str) -> String {
        let mut s = String::new();
        normalize_into(p, scan(p).clean, &mut s);
        s
    }

    #[test]
    fn normalises_slashes_and_case() {
        assert_eq!(norm("/"), "/");
        assert_eq!(norm(""), "/");
        assert_eq!(norm("//"), "/");
        assert_eq!(norm("/SMS/"), "/sms");
        assert_eq!(norm("//chat///threads//"), "/chat/threads");
        assert_eq!(norm("/a/b/"), "/a/b");
        assert_eq!(norm("a/b"), "/a/b");
        assert_eq!(norm("*"), "/*");
        assert_eq!(norm("/A"), "/a");
        assert_eq!(
            norm("/Identities/8:ACS:X/:issueAccessToken"),
            "/identities/8:acs:x/:issueaccesstoken"
        );
        // no decoding: an encoded colon stays encoded
        assert_eq!(
            norm("/calling/callConnections/abc%3Aterminate"),
            "/calling/callconnections/abc%3aterminate"
        );
        // non-ASCII passes through untouched
        assert_eq!(norm("/Rooms/Ünï/x"), "/rooms/Ünï/x");
    }

    #[test]
    fn borrowed_and_copied_paths_agree() {
        for p in [
            "",
            "/",
            "//",
            "/sms",
            "/SMS",
            "/sms/",
            "a/b",
            "/a//b",
            "/emails:send",
            "/chat/threads/19:a1b2c3d4e5@thread.v2/messages",
            "/chat/threads/19:a1B2c3D4e5@thread.v2/messages",
            "/identities/8:acs:x/:issueaccesstoken",
            "/rooms/Ünï/x",
            "/rooms/ünï/x",
            "/@[`{/Z",
            "/\u{80}A",
        ] {
            assert_eq!(norm(p), copied(p), "{p:?}");
        }
    }

    /// `//` anywhere in `p`, through `scan` (which also wants a leading '/' and no trailing one).
    fn has_double_slash(p: &str) -> bool {
        !scan(&format!("/x{p}x")).clean
    }

    #[test]
    fn finds_upper_case_at_every_length_and_place() {
        for len in 0..40 {
            let path = "a".repeat(len);
            assert!(!scan(&path).upper);
            for at in 0..len {
                for (c, upper) in [("A", true), ("Z", true), ("@", false), ("[", false)] {
                    let mut p = path.clone();
                    p.replace_range(at..at + 1, c);
                    assert_eq!(scan(&p).upper, upper, "{p}");
                }
            }
        }
        // Non-ASCII bytes whose low seven bits are a letter are not upper case.
        assert!(!scan("\u{c1}\u{da}ü✓").upper);
        assert!(!scan("\u{c1}\u{da}\u{80}\u{ff}`{\u{0}\u{7f}\u{c1}").upper);
    }

    #[test]
    fn buffer_is_reused_and_reentrancy_is_safe() {
        let outer = with_normalized("/A//B/", |p| {
            // a nested call cannot borrow the buffer and takes the fallback
            let inner = with_normalized("/C/", |q| q.to_owned());
            format!("{p}+{inner}")
        });
        assert_eq!(outer, "/a/b+/c");
        // Upper case, so it is copied (a normal path would be borrowed).
        let huge = "/X".repeat(20_000);
        assert_eq!(with_normalized(&huge, |p| p.len()), huge.len());
        assert!(BUF.with_borrow(|b| b.capacity()) <= BUF_KEEP_MAX);
    }

    #[test]
    fn finds_double_slashes_at_every_length_and_place() {
        for len in 1..40 {
            for at in 0..len - 1 {
                let mut path = "a".repeat(len);
                assert!(!has_double_slash(&path));
                path.replace_range(at..at + 1, "/");
                assert!(!has_double_slash(&path), "{path}");
                path.replace_range(at + 1..at + 2, "/");
                assert!(has_double_slash(&path), "{path}");
            }
        }
        // Bytes that differ from '/' in one bit, and non-ASCII, are not slashes.
        assert!(!has_double_slash("/.o/\u{af}/\u{2f2f}/"));
        assert!(has_double_slash("/\u{af}//"));
    }

    #[test]
    fn scan_agrees_with_the_plain_tests() {
        // Every string of up to 5 characters over an alphabet of the interesting ones,
        // at several offsets, so each falls on every place in a word and across words.
        let alphabet = ["/", "a", "A", "Z", "@", "ü"];
        let mut strings = vec![String::new()];
        let mut longest = strings.clone();
        for _ in 0..5 {
            longest = longest
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            strings.extend(longest.iter().cloned());
        }
        for s in &strings {
            for pad in ["", "aaa", "aaaaa", "aaaaaaa", "aaaaaaaaaaa"] {
                let p = format!("{pad}{s}");
                let got = scan(&p);
                assert_eq!(got.upper, p.bytes().any(|b| b.is_ascii_uppercase()), "{p}");
                let clean =
                    p.starts_with('/') && (p.len() == 1 || !p.ends_with('/')) && !p.contains("//");
                assert_eq!(got.clean, clean, "{p}");
            }
        }
    }

    #[test]
    fn finds_api_version() {
        assert_eq!(
            api_version("api-version=2021-11-15-preview"),
            Some("2021-11-15-preview")
        );
        assert_eq!(api_version("a=1&API-Version=x&api-version=y"), Some("x"));
        assert_eq!(api_version("api-versionx=1&b"), None);
        assert_eq!(api_version(""), None);
        assert_eq!(api_version("api-version"), None);
        assert_eq!(api_version("&api-version=&"), Some(""));
        assert_eq!(api_version("x=api-version=1&API-VERSION=2=3"), Some("2=3"));
        assert_eq!(api_version("a&&api-version=v"), Some("v"));
        assert_eq!(api_version("api-version=ü&b=1"), Some("ü"));
        assert_eq!(api_version("api-versioN"), None);
    }

    #[test]
    fn compiles_templates() {
        let t =
            compile_template("/routing/jobs/{jobId}/assignments/{assignmentId}:Complete").unwrap();
        assert_eq!(t.key, "/routing/jobs/{p0}/assignments/{p1}:complete");
        assert_eq!(t.segment_start_params, 0b11);
        assert_eq!(
            compile_template("/a/x{y}/{z}")
                .unwrap()
                .segment_start_params,
            0b10
        );
        assert_eq!(
            compile_template("/routing/queues/{id}").unwrap(),
            compile_template("/routing/Queues/{queueId}").unwrap()
        );
        let t = compile_template("/files/{*rest}").unwrap();
        assert_eq!(
            (t.key.as_str(), t.segment_start_params),
            ("/files/{*p0}", 0)
        );
        assert_eq!(compile_template("/").unwrap().key, "/");
        for bad in [
            "sms",
            "/sms/",
            "/a//b",
            "/a?x=1",
            "/a/{",
            "/a/}",
            "/a/{}",
            "/a/{b c}",
            "/a/{*r}/x",
            "/a b",
            "/a/{x.y}",
        ] {
            assert!(compile_template(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/chat", "/chat"));
        assert!(prefix_matches("/chat/threads", "/chat"));
        assert!(prefix_matches("/emails:send", "/emails"));
        assert!(!prefix_matches("/chatty", "/chat"));
        assert!(!prefix_matches("/", "/chat"));
        assert_eq!(
            compile_prefix("/deliveryReports").unwrap(),
            "/deliveryreports"
        );
        for bad in ["", "/", "chat", "/chat/", "/a//b", "/{x}"] {
            assert!(compile_prefix(bad).is_err(), "{bad} accepted");
        }
    }
}
