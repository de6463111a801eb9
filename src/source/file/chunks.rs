//! Reading a registry file again after an edit without parsing all of it: only the services whose
//! text changed are parsed.
//!
//! YAML parses slowly (about 18 MB/s here: 2.4 s for 10,000 services × 10 instances), and an edit
//! usually touches a few services. So the file is cut along its services: each item of a block-style
//! `services:` list, from its `-` line up to the next item or the end of the list (YAML), or each
//! object of a `"services"` array (JSON), is one piece; everything else (the namespaces' own fields,
//! the text around each list) is the skeleton. After a
//! parse, each piece's hash is remembered with the service read from it ([`Memo`]). The next
//! version is cut the same way; if its skeleton is the one remembered, each piece whose hash is known
//! becomes a one-line placeholder standing for the remembered service, and that much smaller
//! document is parsed instead of the file.
//!
//! What this relies on, and how it is checked:
//! - A piece reads the same wherever it stands, given the same skeleton. Only aliases (`*name`) make
//!   a piece depend on text outside it: a file that may hold one (a `*` that starts a token) is always
//!   parsed whole, and nothing is remembered of it.
//! - The cut follows the parser's structure. This is not assumed: after a parse, unless the pieces
//!   and the services read pair up one to one (in file order, the same count in every list, each
//!   piece holding its service's name), nothing is remembered; and a shortened document that does
//!   not hand back every placeholder exactly once, in order, is dropped for a whole parse.
//! - Errors carry positions in the file: a shortened document that fails in any way is dropped, and
//!   the whole file is parsed to report the error.
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::model;

/// The services of the version served last, by the hash of the piece of the file each was read from.
#[derive(Default)]
pub struct Memo {
    remembered: Option<Remembered>,
    /// Whether the last successful parse read a shortened document.
    pub(super) shortened: bool,
}

struct Remembered {
    skeleton: u128,
    services: HashMap<u128, Arc<model::Service>>,
}

impl Memo {
    /// Pieces of `split` this memo knows, if its skeleton is the remembered one.
    pub(super) fn usable_for(&self, split: &Split) -> Option<&HashMap<u128, Arc<model::Service>>> {
        self.remembered.as_ref().filter(|r| r.skeleton == split.skeleton).map(|r| &r.services)
    }

    /// Remembers nothing (a version that may hold aliases, or was not read as it looks).
    pub(super) fn forget(&mut self) {
        self.remembered = None;
    }

    /// Remembers the version just parsed: `split` is its cut, `order` its services in file order and
    /// `counts` the number of services in each namespace that has any, in file order.
    pub(super) fn remember(&mut self, text: &str, split: &Split, order: &[Arc<model::Service>], counts: &[usize]) {
        let before = self.remembered.take();
        // Empty lists hold no piece and no namespace counts them.
        let lists = split.lists.iter().copied().filter(|&n| n > 0);
        if split.items.len() != order.len() || !lists.eq(counts.iter().copied()) {
            tracing::debug!(
                pieces = split.items.len(),
                services = order.len(),
                "registry file: its services could not be told apart in the text; the next edit is parsed whole"
            );
            return;
        }
        let mut services = HashMap::with_capacity(order.len());
        for (item, svc) in split.items.iter().zip(order) {
            // A piece remembered with this very service was checked when it was remembered.
            let checked = before.as_ref().and_then(|b| b.services.get(&item.hash)).is_some_and(|s| Arc::ptr_eq(s, svc));
            if !checked && !text[item.range.clone()].contains(svc.name.as_str()) {
                tracing::debug!(service = %svc.name, "registry file: a piece of the text does not name its service; the next edit is parsed whole");
                return;
            }
            services.insert(item.hash, svc.clone());
        }
        self.remembered = Some(Remembered { skeleton: split.skeleton, services });
    }

    #[cfg(test)]
    pub(super) fn remembered_services(&self) -> usize {
        self.remembered.as_ref().map_or(0, |r| r.services.len())
    }
}

/// A version of the file cut along its services.
pub(super) struct Split {
    syntax: Syntax,
    items: Vec<Item>,
    /// Items in each `services` list, in file order.
    lists: Vec<usize>,
    /// Hash of everything that is not an item, nor between two items of one list (commas).
    skeleton: u128,
}

/// What a file's text is written in, as far as cutting it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Syntax {
    /// YAML block style: items are `- ` lines of a `services:` list.
    Yaml,
    /// JSON: items are the objects of a `"services"` array.
    Json,
}

struct Item {
    range: Range<usize>,
    /// Which list (index into `lists`).
    list: usize,
    /// YAML: the column of the item's `-`.
    indent: usize,
    hash: u128,
}

/// The document to parse instead of the file: the file with each run of known pieces (next to each
/// other in one list) replaced by one placeholder, and the services each placeholder stands for.
pub(super) struct Shortened {
    pub(super) text: String,
    pub(super) runs: Vec<Vec<Arc<model::Service>>>,
}

impl Split {
    pub(super) fn syntax(&self) -> Syntax {
        self.syntax
    }

    /// The file shortened by the pieces `known` holds; `None` if it holds none of them (a whole parse
    /// costs the same), or if the placeholders' names are not the only text starting with `prefix`.
    pub(super) fn shorten(
        &self,
        text: &str,
        known: &HashMap<u128, Arc<model::Service>>,
        prefix: &str,
    ) -> Option<Shortened> {
        let mut out = String::new();
        let mut runs: Vec<Vec<Arc<model::Service>>> = Vec::new();
        let mut from = 0;
        // The item just replaced, if any: the next one of the same list joins its placeholder.
        let mut last: Option<usize> = None;
        for (i, item) in self.items.iter().enumerate() {
            let Some(svc) = known.get(&item.hash) else {
                last = None;
                continue;
            };
            match (last, runs.last_mut()) {
                (Some(l), Some(run)) if l + 1 == i && self.items[l].list == item.list => run.push(svc.clone()),
                _ => {
                    out.push_str(&text[from..item.range.start]);
                    let name = format!("{prefix}{}", runs.len());
                    match self.syntax {
                        Syntax::Yaml => {
                            out.extend(std::iter::repeat_n(' ', item.indent));
                            out.push_str("- name: ");
                            out.push_str(&name);
                            out.push('\n');
                        }
                        Syntax::Json => {
                            out.push_str("{\"name\":\"");
                            out.push_str(&name);
                            out.push_str("\"}");
                        }
                    }
                    runs.push(vec![svc.clone()]);
                }
            }
            from = item.range.end;
            last = Some(i);
        }
        if runs.is_empty() {
            return None;
        }
        out.push_str(&text[from..]);
        (memchr::memmem::find_iter(out.as_bytes(), prefix.as_bytes()).count() == runs.len())
            .then_some(Shortened { text: out, runs })
    }
}

/// A prefix for placeholder names. Random, so that no name of a file spells it with escapes; that
/// the file does not hold it as it is [`Split::shorten`] checks.
pub(super) fn placeholder_prefix() -> String {
    format!("cloudmap-mcp-unchanged-{:016x}-", rand::random::<u64>())
}

/// Cuts `text` along its services: as JSON if it starts with `{`, else as YAML. `None` if it cannot
/// be cut safely (YAML that may hold an alias, JSON that does not scan).
pub(super) fn split(text: &str) -> Option<Split> {
    let body = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    let (syntax, items, lists) = if body.starts_with('{') {
        let (items, lists) = json_items(text.as_bytes())?;
        (Syntax::Json, items, lists)
    } else {
        let (items, lists) = yaml_items(text.as_bytes())?;
        (Syntax::Yaml, items, lists)
    };
    Some(finish(syntax, text.as_bytes(), items, lists))
}

/// Hashes the items and the skeleton: the text before each list's first item and after its last.
fn finish(syntax: Syntax, bytes: &[u8], mut items: Vec<Item>, lists: Vec<usize>) -> Split {
    let mut skeleton = Xxh3::new();
    skeleton.update(&[syntax as u8]);
    let mut run = |from: usize, to: usize| {
        skeleton.update(&((to - from) as u64).to_le_bytes());
        skeleton.update(&bytes[from..to]);
    };
    let mut from = 0;
    for i in 0..items.len() {
        if i == 0 || items[i - 1].list != items[i].list {
            run(from, items[i].range.start);
        }
        from = items[i].range.end;
        items[i].hash = xxh3_128(&bytes[items[i].range.clone()]);
    }
    run(from, bytes.len());
    Split { syntax, items, lists, skeleton: skeleton.digest128() }
}

/// Whether a `*` starts a token somewhere (an alias, or text that would be one): at the start of a
/// line, after blank space, or after a flow indicator. Quoted strings and comments are not told
/// apart, which only means parsing whole a file that did not need it.
fn may_hold_alias(text: &[u8]) -> bool {
    memchr::memchr_iter(b'*', text)
        .any(|i| i == 0 || matches!(text[i - 1], b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',' | b':'))
}

/// `- `, `-` alone, or `-` and a tab: a block sequence item.
fn is_item(rest: &[u8]) -> bool {
    rest == b"-" || rest.starts_with(b"- ") || rest.starts_with(b"-\t")
}

/// The column of the key if the line (after its indentation) is `services:` with the value on the
/// lines below, possibly behind the `- ` of its namespace's item.
fn services_key(indent: usize, mut rest: &[u8]) -> Option<usize> {
    let mut column = indent;
    while is_item(rest) && rest.len() > 1 {
        let blank = 1 + rest[1..].iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        column += blank;
        rest = &rest[blank..];
    }
    let after = rest.strip_prefix(b"services:")?;
    let value = after.trim_ascii_start();
    // Nothing after the colon but blanks and a comment (which needs a blank before it).
    (value.is_empty() || (value[0] == b'#' && value.len() < after.len())).then_some(column)
}

/// The items of YAML text's block-style `services:` lists, line by line; `None` if it may hold an
/// alias.
fn yaml_items(bytes: &[u8]) -> Option<(Vec<Item>, Vec<usize>)> {
    if may_hold_alias(bytes) {
        return None;
    }
    #[derive(Clone, Copy)]
    enum State {
        /// In the skeleton.
        Outside,
        /// After a `services:` key at this column: a list below it at that column or deeper is one.
        AfterKey(usize),
        /// In a list whose items start at this column.
        In(usize),
    }
    let mut items: Vec<Item> = Vec::new();
    let mut lists: Vec<usize> = Vec::new();
    let mut state = State::Outside;
    let ends = memchr::memchr_iter(b'\n', bytes).map(|i| i + 1).chain((bytes.last() != Some(&b'\n')).then_some(bytes.len()));
    let mut pos = 0;
    for end in ends {
        if end <= pos {
            break;
        }
        let line = &bytes[pos..end];
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let mut rest = &line[indent..];
        while let [head @ .., b'\n' | b'\r'] = rest {
            rest = head;
        }
        let quiet = rest.is_empty() || rest[0] == b'#';
        loop {
            match state {
                State::In(column) => {
                    if quiet || indent > column {
                        break;
                    }
                    if let Some(last) = items.last_mut() {
                        last.range.end = pos;
                    }
                    if indent == column && is_item(rest) {
                        items.push(Item { range: pos..end, list: lists.len() - 1, indent, hash: 0 });
                        *lists.last_mut().expect("a list is open") += 1;
                        break;
                    }
                    state = State::Outside;
                }
                State::AfterKey(key) => {
                    if quiet {
                        break;
                    }
                    if indent >= key && is_item(rest) {
                        items.push(Item { range: pos..end, list: lists.len(), indent, hash: 0 });
                        lists.push(1);
                        state = State::In(indent);
                        break;
                    }
                    state = State::Outside;
                }
                State::Outside => {
                    if let Some(key) = services_key(indent, rest) {
                        state = State::AfterKey(key);
                    }
                    break;
                }
            }
        }
        pos = end;
    }
    if let (State::In(_), Some(last)) = (state, items.last_mut()) {
        last.range.end = bytes.len();
    }
    Some((items, lists))
}

/// The items (objects) of JSON text's `"services"` arrays; `None` if the text does not scan as
/// JSON's nesting, or a `"services"` array holds something other than objects.
fn json_items(bytes: &[u8]) -> Option<(Vec<Item>, Vec<usize>)> {
    enum Frame {
        /// An object; `key`: the next string is a key; `services`: the current key is `"services"`.
        Object { key: bool, services: bool },
        /// An array; `Some(list)` if it is the value of a `"services"` key.
        Array(Option<usize>),
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    let mut lists: Vec<usize> = Vec::new();
    // The item being read, and the depth its object was opened at.
    let mut open: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let in_services = matches!(stack.last(), Some(Frame::Array(Some(_))));
        match c {
            b'"' => {
                if in_services {
                    return None;
                }
                let start = i;
                i += 1;
                loop {
                    i += memchr::memchr2(b'"', b'\\', &bytes[i..])?;
                    if bytes[i] == b'\\' {
                        i += 2;
                    } else {
                        break;
                    }
                }
                if let Some(Frame::Object { key, services }) = stack.last_mut() {
                    if *key {
                        *services = &bytes[start..=i] == b"\"services\"";
                        *key = false;
                    }
                }
            }
            b'{' => {
                if let Some(Frame::Array(Some(list))) = stack.last() {
                    items.push(Item { range: i..i, list: *list, indent: 0, hash: 0 });
                    lists[*list] += 1;
                    open = Some(stack.len());
                }
                stack.push(Frame::Object { key: true, services: false });
            }
            b'[' => {
                let list = match stack.last() {
                    Some(Frame::Object { key: false, services: true }) => {
                        lists.push(0);
                        Some(lists.len() - 1)
                    }
                    _ => None,
                };
                if in_services {
                    return None;
                }
                stack.push(Frame::Array(list));
            }
            b'}' | b']' => {
                match (stack.pop()?, c) {
                    (Frame::Object { .. }, b'}') | (Frame::Array(_), b']') => {}
                    _ => return None,
                }
                if open == Some(stack.len()) {
                    items.last_mut()?.range.end = i + 1;
                    open = None;
                }
            }
            b',' => {
                if let Some(Frame::Object { key, services }) = stack.last_mut() {
                    *key = true;
                    *services = false;
                }
            }
            b' ' | b'\t' | b'\r' | b'\n' | b':' => {}
            _ if in_services => return None,
            _ => {}
        }
        i += 1;
    }
    (stack.is_empty() && open.is_none()).then_some((items, lists))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<&str> {
        split(text).unwrap().items.iter().map(|i| &text[i.range.clone()]).collect()
    }

    #[test]
    fn items_of_each_services_list_are_cut_out() {
        let text = "\
namespaces:
  - name: a
    type: HTTP
    services:
      - name: s1
        instances:
          - id: i1
            attributes: {AWS_INSTANCE_IPV4: 10.0.0.1}
      # between
      -
        name: s2

      - {name: s3}
  - services:
    - name: t1
    - name: t2
    name: b
    type: HTTP
";
        assert_eq!(
            pieces(text),
            [
                "      - name: s1\n        instances:\n          - id: i1\n            attributes: {AWS_INSTANCE_IPV4: 10.0.0.1}\n      # between\n",
                "      -\n        name: s2\n\n",
                "      - {name: s3}\n",
                "    - name: t1\n",
                "    - name: t2\n",
            ]
        );
        assert_eq!(split(text).unwrap().lists, [3, 2]);
    }

    #[test]
    fn the_skeleton_hash_sees_everything_but_the_items() {
        let base = "namespaces:\n  - name: a\n    type: HTTP\n    services:\n      - name: s1\n      - name: s2\n";
        let skeleton = |t: &str| split(t).unwrap().skeleton;
        // An item's text is not the skeleton; adding or removing items does not move it.
        assert_eq!(skeleton(base), skeleton(&base.replace("s2", "s9")));
        assert_eq!(skeleton(base), skeleton(&format!("{base}      - name: s3\n")));
        // A namespace field is.
        assert_ne!(skeleton(base), skeleton(&base.replace("HTTP", "DNS_PRIVATE")));
        // Text moved from one side of a list to the other is too.
        let two = "namespaces:\n  - name: a\n    services:\n      - name: s\n  - name: b\n";
        let moved = "namespaces:\n  - name: a\n  - name: b\n    services:\n      - name: s\n";
        assert_ne!(skeleton(two), skeleton(moved));
    }

    #[test]
    fn only_block_lists_under_a_services_key_are_cut() {
        // Flow style, a quoted key, a key with a value on its line: all skeleton.
        for text in [
            "namespaces:\n  - name: a\n    services: [{name: s1}]\n",
            "namespaces:\n  - name: a\n    \"services\":\n      - name: s1\n",
            "namespaces:\n  - name: a\n    services: # c\n    - name: s1\n    x: 1\n",
            "namespaces:\n  - name: a\n    attributes:\n      note: services:\n      - name: s1\n",
        ] {
            let got = pieces(text);
            if text.contains("# c") {
                assert_eq!(got, ["    - name: s1\n"], "{text}");
            } else {
                assert!(got.is_empty(), "{text}: {got:?}");
            }
        }
        // A list at a shallower column than its key is not its value.
        assert!(pieces("x:\n  services:\n- a\n").is_empty());
    }

    #[test]
    fn a_possible_alias_means_no_cut() {
        assert!(split("a: &x 1\nb: *x\n").is_none());
        assert!(split("a: [*x]\n").is_none());
        assert!(split("*x: 1\n").is_none());
        assert!(split("a: \"*.example.com\"\nb: x*y\n").is_some());
    }

    #[test]
    fn shortening_replaces_known_pieces_with_numbered_placeholders() {
        let text = "namespaces:\n  - name: a\n    services:\n      - name: s1\n      - name: s2\n      - name: s3\n";
        let cut = split(text).unwrap();
        let svc = |name: &str| {
            Arc::new(model::Service {
                name: name.into(),
                id: None,
                arn: None,
                create_date: None,
                attributes: Default::default(),
                instances: Vec::new().into(),
            })
        };
        let names = |s: &Shortened| -> Vec<Vec<String>> {
            s.runs.iter().map(|r| r.iter().map(|s| s.name.clone()).collect()).collect()
        };
        let known: HashMap<_, _> = [(cut.items[0].hash, svc("s1")), (cut.items[2].hash, svc("s3"))].into();
        let short = cut.shorten(text, &known, "P-").unwrap();
        assert_eq!(
            short.text,
            "namespaces:\n  - name: a\n    services:\n      - name: P-0\n      - name: s2\n      - name: P-1\n"
        );
        assert_eq!(names(&short), [["s1"], ["s3"]]);
        // Pieces next to each other: one placeholder.
        let known: HashMap<_, _> = [(cut.items[1].hash, svc("s2")), (cut.items[2].hash, svc("s3"))].into();
        let short = cut.shorten(text, &known, "P-").unwrap();
        assert_eq!(short.text, "namespaces:\n  - name: a\n    services:\n      - name: s1\n      - name: P-0\n");
        assert_eq!(names(&short), [vec!["s2", "s3"]]);
        assert!(cut.shorten(text, &HashMap::new(), "P-").is_none());
        // A prefix the file holds already: no placeholder can be told from the file's own names.
        let clash = text.replace("s2", "P-0");
        assert!(split(&clash).unwrap().shorten(&clash, &known, "P-").is_none());
    }
}
