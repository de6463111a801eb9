//! Small helpers shared by the servers: async waits, log limiting, one-line logs, and the
//! allocator settings the server makes for itself.
use tokio::sync::watch;

pub mod fs;

/// Completes when the flag turns true, or when its sender is gone.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}

/// Completes with true when the value becomes `Some`, false if the sender is gone first.
pub async fn until_some<T>(rx: &mut watch::Receiver<Option<T>>) -> bool {
    rx.wait_for(|v| v.is_some()).await.map(|_| ()).is_ok()
}

/// Lets a repeated log line through at most once per interval, counting the ones held back.
#[derive(Debug)]
pub struct LogLimiter {
    every: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogLimiter {
    pub fn new(every: std::time::Duration) -> Self {
        LogLimiter {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were held back since the last one),
    /// `None` when this one is held back.
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let held = s.1;
                *s = (Some(now), 0);
                Some(held)
            }
        }
    }
}

/// Whether printing `c` could start a new line or drive a terminal: control characters and the
/// Unicode line and paragraph separators.
fn breaks_lines(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `s` with control characters (newline, carriage return, escape, ...) and the Unicode line and
/// paragraph separators escaped as Rust does (`\n`, `\r`, `\u{1b}`, `\u{2028}`), everything else kept.
/// For text from registries (attribute keys and values, names, ids) printed into logs, YAML comments
/// and other line-based output: the result is always one line. Backslashes and quotes are kept, so
/// text already quoted with `{:?}` is not escaped twice.
pub fn escape_control(s: &str) -> std::borrow::Cow<'_, str> {
    escape_where(s, breaks_lines)
}

/// `s` with the characters `escape` picks written as Rust escapes; borrowed when there are none.
fn escape_where(s: &str, escape: impl Fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(&escape) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if escape(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Displays a string with [`escape_control`]: `tracing::warn!(reason = %Escaped(&r), ...)`.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&escape_control(self.0))
    }
}

/// A log writer that keeps every event on one line whatever its fields hold: the log layer writes
/// each event with one `write_all` ending in `\n`; any other line break or control character in it
/// is escaped (see [`escape_control`]), except the escape character when colours are on (a terminal).
/// The last line of defence: fields printed with `%` (Display) are not escaped by the text format.
pub struct OneLinePerEvent<W> {
    inner: W,
    keep_esc: bool,
}

impl<W> OneLinePerEvent<W> {
    pub fn new(inner: W, ansi: bool) -> Self {
        OneLinePerEvent { inner, keep_esc: ansi }
    }
}

impl<W: std::io::Write> std::io::Write for OneLinePerEvent<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end): (&[u8], &[u8]) = match buf.split_last() {
            Some((b'\n', body)) => (body, b"\n"),
            _ => (buf, b""),
        };
        let text = String::from_utf8_lossy(body);
        let keep_esc = self.keep_esc;
        match escape_where(&text, |c| breaks_lines(c) && c != '\t' && !(keep_esc && c == '\u{1b}')) {
            std::borrow::Cow::Borrowed(_) => self.inner.write_all(buf)?,
            std::borrow::Cow::Owned(mut out) => {
                out.push_str(std::str::from_utf8(end).unwrap_or_default());
                self.inner.write_all(out.as_bytes())?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Hands the memory freed in every malloc arena back to the kernel. glibc keeps freed memory for
/// reuse; after a burst of short-lived allocations (parsing a large file, the first Cloud Map sync's
/// thousands of API answers) that is tens to hundreds of MB of resident memory held until the next
/// burst, which may come days later. Costs a walk over the free chunks of every arena (a few
/// milliseconds at 10k services × 10 instances). Does nothing with another C library.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How many malloc arenas the server lets glibc create when the environment does not say. glibc's
/// default, 8 per core, gives each of the runtime's threads (and each blocking-pool thread) an arena
/// of its own, each keeping its own freed memory and fragments: the resident memory of a Cloud Map
/// poller then creeps up with the threads its API calls happen to run on. Two arenas keep the
/// contention of the few threads this server runs low (measured in BENCHMARKS.md, Cloud Map poller).
pub const MALLOC_ARENA_MAX: i32 = 2;

/// The arena limit the server sets at startup ([`limit_malloc_arenas`]): none when the environment
/// already chose one, with `MALLOC_ARENA_MAX` or the `glibc.malloc.arena_max` tunable (glibc applied
/// it before `main`; the server does not override an operator's choice).
pub fn arena_limit(malloc_arena_max: Option<&std::ffi::OsStr>, glibc_tunables: Option<&std::ffi::OsStr>) -> Option<i32> {
    let tuned = glibc_tunables.is_some_and(|t| t.to_string_lossy().split(':').any(|kv| kv.starts_with("glibc.malloc.arena_max=")));
    if malloc_arena_max.is_some() || tuned {
        None
    } else {
        Some(MALLOC_ARENA_MAX)
    }
}

/// Limits glibc's malloc arenas to [`MALLOC_ARENA_MAX`] unless the environment set a limit. Call
/// first thing in `main`, before any thread starts. Returns the limit set, if any.
pub fn limit_malloc_arenas() -> Option<i32> {
    let limit = arena_limit(std::env::var_os("MALLOC_ARENA_MAX").as_deref(), std::env::var_os("GLIBC_TUNABLES").as_deref())?;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a malloc parameter; called before any other thread exists.
    unsafe {
        if libc::mallopt(libc::M_ARENA_MAX, limit) == 1 {
            return Some(limit);
        }
    }
    None
}

/// Deepest nesting of YAML flow collections accepted in the registry and mapping files. The YAML
/// parsers' cost grows with the square of this depth (a 100 KB file of nested `[` took minutes),
/// and the deserializers refuse anything deeper than 128 levels anyway, so deeper files are
/// refused before parsing.
pub const MAX_FLOW_NESTING: usize = 256;

/// Where flow collections (`[`, `{`) first nest deeper than `limit`, as (line, column), ignoring
/// quoted scalars and comments. Brackets inside plain scalars are counted too, which can only make
/// a broken file fail sooner: no valid registry or mapping file comes near the limit.
pub fn flow_nesting_beyond(text: &str, limit: usize) -> Option<(usize, usize)> {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Single,
        Double,
        Comment,
    }
    let (mut depth, mut line, mut column) = (0usize, 1usize, 0usize);
    let mut state = In::Plain;
    let mut escaped = false;
    let mut prev = '\n';
    for ch in text.chars() {
        column += 1;
        if ch == '\n' {
            line += 1;
            column = 0;
            if state == In::Comment {
                state = In::Plain;
            }
            prev = ch;
            continue;
        }
        let token_start = prev.is_whitespace() || matches!(prev, '[' | '{' | ',' | ':');
        match state {
            In::Comment => {}
            In::Double => {
                if escaped {
                    escaped = false;
                } else if ch == '\\' {
                    escaped = true;
                } else if ch == '"' {
                    state = In::Plain;
                }
            }
            In::Single => {
                if ch == '\'' {
                    state = In::Plain;
                }
            }
            In::Plain => match ch {
                '#' if token_start => state = In::Comment,
                '"' if token_start => state = In::Double,
                '\'' if token_start => state = In::Single,
                '[' | '{' => {
                    depth += 1;
                    if depth > limit {
                        return Some((line, column));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = ch;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_limit_defers_to_the_environment() {
        use std::ffi::OsStr;
        assert_eq!(arena_limit(None, None), Some(MALLOC_ARENA_MAX));
        assert_eq!(arena_limit(Some(OsStr::new("8")), None), None);
        // An empty value is still the operator's choice: glibc ignores it, and so does the server.
        assert_eq!(arena_limit(Some(OsStr::new("")), None), None);
        assert_eq!(arena_limit(None, Some(OsStr::new("glibc.malloc.arena_max=4"))), None);
        assert_eq!(arena_limit(None, Some(OsStr::new("glibc.malloc.trim_threshold=1:glibc.malloc.arena_max=1"))), None);
        assert_eq!(arena_limit(None, Some(OsStr::new("glibc.malloc.trim_threshold=131072"))), Some(MALLOC_ARENA_MAX));
    }

    #[test]
    fn returning_freed_memory_keeps_live_allocations() {
        let live: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 4096]).collect();
        drop((0..256).map(|_| vec![0u8; 8192]).collect::<Vec<_>>());
        return_freed_memory();
        assert!(live.iter().enumerate().all(|(i, v)| v.iter().all(|b| *b == i as u8)));
    }

    #[test]
    fn escape_control_keeps_text_on_one_line() {
        assert!(matches!(escape_control("plain key: ü \\ \"q\""), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape_control("k\nINFO forged"), "k\\nINFO forged");
        assert_eq!(escape_control("a\r\n# b\tc"), "a\\r\\n# b\\tc");
        assert_eq!(escape_control("\u{1b}[31mred\u{2028}x\u{85}\0"), "\\u{1b}[31mred\\u{2028}x\\u{85}\\0");
        // Already-quoted text is not escaped again.
        let quoted = format!("{:?}", "a\nb");
        assert_eq!(escape_control(&quoted), quoted);
        for s in ["x\ny", "\r", "a\u{2029}b", "\u{0}\u{7f}\u{9f}"] {
            let e = escape_control(s);
            assert!(!e.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'), "{e:?}");
            assert_eq!(Escaped(s).to_string(), e);
        }
    }

    #[test]
    fn one_line_per_event_escapes_all_but_the_final_newline() {
        use std::io::Write;
        let mut w = OneLinePerEvent::new(Vec::new(), false);
        w.write_all(b"INFO msg key=a\nERROR forged\r\n").unwrap();
        w.write_all(b"INFO plain\tline\n").unwrap();
        w.write_all(b"INFO \x1b[1mbold\n").unwrap();
        assert_eq!(String::from_utf8(w.inner).unwrap(), "INFO msg key=a\\nERROR forged\\r\nINFO plain\tline\nINFO \\u{1b}[1mbold\n");
        let mut w = OneLinePerEvent::new(Vec::new(), true);
        w.write_all(b"\x1b[1mINFO\x1b[0m a\nb\n").unwrap();
        assert_eq!(String::from_utf8(w.inner).unwrap(), "\x1b[1mINFO\x1b[0m a\\nb\n");
    }

    #[test]
    fn log_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let l = LogLimiter::new(std::time::Duration::from_millis(200));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(l.allow(), Some(2));
        assert_eq!(l.allow(), None);
    }
}
