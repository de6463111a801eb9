//! `/debug/serviceentries`, streamed from the served snapshot.
//!
//! A request keeps the snapshot it started on (an `Arc`: nothing is copied, and a new snapshot
//! published meanwhile does not change the answer), reads its encoded entries back one by one
//! ([`crate::cache::decode`]) and writes each as YAML or JSON. The body is made in pieces of
//! about [`PIECE`] bytes, each only when the connection asks for more: a slow reader holds one
//! piece plus what hyper and the socket buffer, whatever the registry's size, and a reader that
//! leaves stops the work. The pieces are made on the debug views' render thread, one at a time in
//! the order asked, so all debug views together never take more than that one thread away from
//! the xDS streams. When the last request in progress ends, the memory its pieces used is returned
//! to the kernel ([`ViewCache::stream_started`]).
//!
//! The bytes are those of `cloudmap-mcp render` of the same snapshot (the rendered entries, then
//! for YAML the `#` comments on what was left out, for JSON one Kubernetes `List`).
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;

use super::views::{RenderError, ViewCache};
use crate::cache::decode::{decode_entry, DecodeError};
use crate::cache::ResourceSnapshot;
use crate::translate::render::{self, Format};

/// A piece of the body is cut after the entry that takes it past this size.
pub const PIECE: usize = 32 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Head,
    Entries,
    Tail,
    Done,
}

/// The body of one request, piece by piece.
pub struct EntryPieces {
    snap: Arc<ResourceSnapshot>,
    format: Format,
    next: usize,
    stage: Stage,
}

impl EntryPieces {
    pub fn new(snap: Arc<ResourceSnapshot>, format: Format) -> Self {
        EntryPieces { snap, format, next: 0, stage: Stage::Head }
    }

    /// The next piece, or `None` after the last one.
    pub fn next_piece(&mut self) -> Result<Option<Bytes>, DecodeError> {
        let mut out = String::with_capacity(PIECE + PIECE / 4);
        let resources = &self.snap.service_entries.resources;
        while out.len() < PIECE {
            match self.stage {
                Stage::Head => {
                    if self.format == Format::Json {
                        out.push_str(render::JSON_LIST_HEAD);
                    }
                    self.stage = Stage::Entries;
                }
                Stage::Entries => {
                    let Some(encoded) = resources.get(self.next) else {
                        self.stage = Stage::Tail;
                        continue;
                    };
                    let entry = decode_entry(encoded)?;
                    match self.format {
                        Format::Yaml => render::yaml_document(entry.shown(), &mut out),
                        Format::Json => render::json_item(entry.shown(), self.next == 0, &mut out),
                    }
                    self.next += 1;
                }
                Stage::Tail => {
                    match self.format {
                        Format::Yaml => out.push_str(&render::comments(&self.snap.rejected, &self.snap.notes)),
                        Format::Json => render::json_list_tail(resources.is_empty(), &mut out),
                    }
                    self.stage = Stage::Done;
                }
                Stage::Done => break,
            }
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}

/// The streamed HTTP body of `pieces`, each piece made on `cache`'s render thread when the
/// connection polls for it. An entry that does not read back (a bug) ends the body early with an
/// error (the client sees the connection cut, never a truncated body passed off as complete).
pub fn body(cache: Arc<ViewCache>, pieces: EntryPieces) -> Body {
    // Dropped with the stream, however it ends.
    let open = cache.stream_started();
    let stream = futures::stream::unfold(Some(pieces), move |state| {
        let _open = &open;
        let cache = cache.clone();
        async move {
            let mut pieces = state?;
            let made = cache
                .on_render_thread(move || {
                    let piece = pieces.next_piece();
                    (pieces, piece)
                })
                .await;
            match made {
                Ok((pieces, Ok(Some(piece)))) => Some((Ok(piece), Some(pieces))),
                Ok((_, Ok(None))) => None,
                Ok((pieces, Err(e))) => {
                    tracing::error!(entry = pieces.next, serial = pieces.snap.serial, error = %e, "a served ServiceEntry does not read back (a bug: please report it with this log); /debug/serviceentries cut short");
                    Some((Err(RenderError::Failed(e.to_string())), None))
                }
                Err(e) => {
                    tracing::error!(error = %e, "/debug/serviceentries cut short");
                    Some((Err(e), None))
                }
            }
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::cache::ResourceCache;
    use crate::source::file;
    use crate::translate::{self, Options};

    fn snapshot(registry: &Path, mapping: Option<&Path>) -> Arc<ResourceSnapshot> {
        let mut opts = Options::default();
        if let Some(m) = mapping {
            opts.mapping = Arc::new(translate::mapping::parse(&std::fs::read_to_string(m).unwrap()).unwrap());
        }
        let model = Arc::new(file::load(registry).unwrap());
        Arc::new(ResourceCache::new(opts).build(&model).0)
    }

    /// The body as it was rendered before streaming: the snapshot translated again, rendered whole.
    fn whole(snap: &ResourceSnapshot, format: Format) -> String {
        let t = snap.translation();
        let mut body = render::render(&t.entries, format);
        if format == Format::Yaml {
            body.push_str(&render::report_comments(&t));
        }
        body
    }

    fn pieces(snap: &Arc<ResourceSnapshot>, format: Format) -> Vec<Bytes> {
        let mut p = EntryPieces::new(snap.clone(), format);
        std::iter::from_fn(|| p.next_piece().unwrap()).collect()
    }

    /// The streamed body equals the whole render, byte for byte, for every test registry (with
    /// its mapping file where it has one: rules, overrides, rejected services and notes) in both
    /// formats, and for an empty snapshot.
    #[test]
    fn the_streamed_body_equals_the_whole_render() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let data = root.join("src/translate/testdata");
        let mapping = data.join("mapping.mapping.yaml");
        let mut cases = vec![(root.join("examples/registry.yaml"), None)];
        for name in ["ports", "overrides", "invalid"] {
            cases.push((data.join(format!("{name}.registry.yaml")), None));
        }
        cases.push((data.join("mapping.registry.yaml"), Some(mapping.as_path())));
        let empty = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(empty.path(), "namespaces: []\n").unwrap();
        cases.push((empty.path().to_path_buf(), None));
        for (registry, mapping) in cases {
            let snap = snapshot(&registry, mapping);
            for format in [Format::Yaml, Format::Json] {
                let streamed: Vec<u8> = pieces(&snap, format).concat();
                let want = whole(&snap, format);
                assert_eq!(String::from_utf8(streamed).unwrap(), want, "{} as {format:?}", registry.display());
            }
        }
        // The cases above are not all trivial: rejections and notes became comments.
        let invalid = snapshot(&data.join("invalid.registry.yaml"), None);
        assert!(!invalid.rejected.is_empty());
        assert!(whole(&invalid, Format::Yaml).contains("\n# rejected "));
    }

    /// A large snapshot comes in pieces of about [`PIECE`] bytes: no piece is much larger than
    /// one piece plus one entry.
    #[test]
    fn a_large_snapshot_comes_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.yaml");
        let mut s = String::from("namespaces:\n- name: big.example\n  type: DNS_PRIVATE\n  services:\n");
        for n in 0..300 {
            s += &format!("  - name: app-{n}\n    instances:\n");
            for i in 0..10 {
                s += &format!("    - {{id: i-{i}, attributes: {{AWS_INSTANCE_IPV4: 10.1.{n}.{i}, AWS_INSTANCE_PORT: '80', track: t{i}}}}}\n", n = n % 250);
            }
        }
        std::fs::write(&path, s).unwrap();
        let snap = snapshot(&path, None);
        for format in [Format::Yaml, Format::Json] {
            let p = pieces(&snap, format);
            let total: usize = p.iter().map(Bytes::len).sum();
            assert!(total > 10 * PIECE, "{total} bytes");
            assert!(p.len() >= total / (2 * PIECE), "{} pieces for {total} bytes", p.len());
            assert!(p.iter().all(|b| b.len() < PIECE + 8 * 1024), "a piece of {:?} bytes", p.iter().map(Bytes::len).max());
            assert_eq!(p.concat(), whole(&snap, format).into_bytes());
        }
    }

    /// Through the HTTP body: the same bytes, made on the render thread.
    #[tokio::test]
    async fn the_http_body_carries_every_piece() {
        let snap = snapshot(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/registry.yaml"), None);
        let cache = Arc::new(ViewCache::new(Default::default()));
        let got = axum::body::to_bytes(body(cache, EntryPieces::new(snap.clone(), Format::Json)), usize::MAX).await.unwrap();
        assert_eq!(got, Bytes::from(whole(&snap, Format::Json)));
    }
}
