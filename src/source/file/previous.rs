//! The snapshot served before a parse, indexed by service name, for [`ParsedService`] to share
//! from. Set for one parse on its thread (parsing is synchronous and never nested).
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use super::FileService;
use crate::model::{self, Timestamp};

thread_local! {
    static PREVIOUS: RefCell<Previous> = RefCell::new(Previous::default());
    static PLACEHOLDERS: RefCell<Placeholders> = RefCell::new(Placeholders::default());
}

/// The previous snapshot's services, indexed by name once more than a few are looked up (a
/// shortened document looks up only the services that changed).
#[derive(Default)]
struct Previous {
    services: Vec<Arc<model::Service>>,
    by_name: Option<HashMap<String, Vec<Arc<model::Service>>>>,
    lookups: usize,
}

/// Lookups by scanning before the services are indexed.
const SCANS: usize = 16;

impl Previous {
    fn named<'a>(&'a mut self, name: &'a str) -> Box<dyn Iterator<Item = &'a Arc<model::Service>> + 'a> {
        self.lookups += 1;
        if self.by_name.is_none() && self.lookups > SCANS {
            let mut index: HashMap<String, Vec<Arc<model::Service>>> = HashMap::new();
            for svc in &self.services {
                index.entry(svc.name.clone()).or_default().push(svc.clone());
            }
            self.by_name = Some(index);
        }
        match &self.by_name {
            Some(index) => Box::new(index.get(name).into_iter().flatten()),
            None => Box::new(self.services.iter().filter(move |s| s.name == name)),
        }
    }
}

/// Services a shortened document names by placeholder (see [`super::chunks`]): the `n`th
/// placeholder is `prefix` then `n`, and stands for `runs[n]`.
#[derive(Default)]
struct Placeholders {
    prefix: String,
    runs: Vec<Vec<Arc<model::Service>>>,
    taken: usize,
}

/// The previous snapshot's services are findable while this lives.
pub(super) struct Scope(());

impl Scope {
    pub(super) fn new(previous: Option<&model::Snapshot>) -> Scope {
        let services = previous.iter().flat_map(|s| &s.namespaces).flat_map(|ns| &ns.services).cloned().collect();
        PREVIOUS.with(|p| *p.borrow_mut() = Previous { services, by_name: None, lookups: 0 });
        Scope(())
    }

    /// As [`Scope::new`], and the placeholders of a shortened document stand for `runs`.
    pub(super) fn with_placeholders(
        previous: Option<&model::Snapshot>,
        prefix: String,
        runs: Vec<Vec<Arc<model::Service>>>,
    ) -> Scope {
        PLACEHOLDERS.with(|p| *p.borrow_mut() = Placeholders { prefix, runs, taken: 0 });
        Scope::new(previous)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        PREVIOUS.with(|p| *p.borrow_mut() = Previous::default());
        PLACEHOLDERS.with(|p| *p.borrow_mut() = Placeholders::default());
    }
}

/// The services a placeholder name stands for; an error if the name is a placeholder out of
/// order (the document is then not what it was made to be).
pub(super) fn placeholder(name: &str) -> Option<Result<Vec<Arc<model::Service>>, &'static str>> {
    PLACEHOLDERS.with(|p| {
        let mut p = p.borrow_mut();
        if p.prefix.is_empty() {
            return None;
        }
        let n = name.strip_prefix(p.prefix.as_str())?;
        if n.parse::<usize>().ok() != Some(p.taken) || p.taken >= p.runs.len() {
            return Some(Err("a placeholder out of order"));
        }
        let taken = p.taken;
        p.taken += 1;
        Some(Ok(std::mem::take(&mut p.runs[taken])))
    })
}

/// How many placeholders the parse in this scope has handed out.
pub(super) fn placeholders_taken() -> usize {
    PLACEHOLDERS.with(|p| p.borrow().taken)
}

/// The previous service equal to what `svc` becomes once read (same fields, same instances in
/// id order), if any. A service that would not validate never equals one (each served one did).
pub(super) fn find(svc: &FileService<'_>) -> Option<Arc<model::Service>> {
    PREVIOUS.with(|p| {
        let mut p = p.borrow_mut();
        let mut candidates = p.named(&svc.name).peekable();
        candidates.peek()?;
        let create_date = match &svc.create_date {
            None => None,
            Some(d) => Some(Timestamp::parse_rfc3339(d).ok()?),
        };
        let mut instances: Vec<_> = svc.instances.iter().collect();
        instances.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        candidates
            .find(|prev| {
                prev.id == svc.id
                    && prev.arn == svc.arn
                    && prev.create_date == create_date
                    && super::same_map(&prev.attributes, &svc.attributes)
                    && prev.instances.len() == instances.len()
                    && prev.instances.iter().zip(&instances).all(|(a, b)| {
                        a.id == *b.id
                            && a.health == b.health_status.unwrap_or_default()
                            && super::same_map(&a.attributes, &b.attributes)
                    })
            })
            .cloned()
    })
}
