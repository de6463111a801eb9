//! Bounds on what a registry file may hold, counted while it is deserialized.
//!
//! YAML aliases let a small file stand for a huge one: an anchored list of instances reused by many
//! services, or a long string reused as many attribute values, is copied at every use. So the caps
//! apply to what the file expands to, and they are counted element by element as the deserializer
//! produces them: a file over a cap stops being read at the element that crosses it, and nothing
//! beyond that is ever built.
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// Caps on a registry file. Over any of them the file is refused (at startup: an error; as an
/// edit: logged, the last good version stays served).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest file read, in bytes.
    pub max_bytes: u64,
    /// Most services (all namespaces together) after alias expansion.
    pub max_services: usize,
    /// Most instances (all services together) after alias expansion.
    pub max_instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: DEFAULT_MAX_BYTES, max_services: DEFAULT_MAX_SERVICES, max_instances: DEFAULT_MAX_INSTANCES }
    }
}

/// 128 MiB: about four times a registry of 10,000 services with 10 instances each (31–34 MB).
pub const DEFAULT_MAX_BYTES: u64 = 128 << 20;
/// 50,000 services.
pub const DEFAULT_MAX_SERVICES: usize = 50_000;
/// 200,000 instances: twice a registry of 10,000 services with 10 instances each. Each instance
/// costs about 1.3 KB while a file is read, so this also bounds what an alias bomb can take.
pub const DEFAULT_MAX_INSTANCES: usize = 200_000;

/// Strings (names, ids, attribute keys and values) a file may expand to, beyond its own size:
/// a file without aliases never comes near; aliases may share a few attribute sets (up to four
/// times the file plus this), not multiply a string into gigabytes.
const EXPANSION_ALLOWANCE: usize = 16 << 20;

/// What one parse has counted so far, and its caps.
#[derive(Clone, Copy, Debug)]
struct Budget {
    limits: Limits,
    max_string_bytes: usize,
    namespaces: usize,
    services: usize,
    instances: usize,
    string_bytes: usize,
}

thread_local! {
    /// The budget of the parse running on this thread (parsing is synchronous and never nested).
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// Runs `f` (one deserialization of a file of `file_len` bytes) with a fresh budget.
pub(super) fn with_budget<T>(limits: Limits, file_len: usize, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Budget>);
    impl Drop for Reset {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0.take()));
        }
    }
    let budget = Budget {
        limits,
        max_string_bytes: file_len.saturating_mul(4).saturating_add(EXPANSION_ALLOWANCE),
        namespaces: 0,
        services: 0,
        instances: 0,
        string_bytes: 0,
    };
    let _reset = Reset(BUDGET.with(|b| b.replace(Some(budget))));
    f()
}

#[derive(Clone, Copy)]
pub(super) enum Item {
    Namespace,
    Service,
    Instance,
}

/// Counts one element (and `bytes` of strings); an error names the cap it crosses.
fn charge<E: de::Error>(item: Option<Item>, bytes: usize) -> Result<(), E> {
    charge_n(item, 1, bytes)
}

/// Counts `n` elements of a kind (and `bytes` of strings).
fn charge_n<E: de::Error>(item: Option<Item>, n: usize, bytes: usize) -> Result<(), E> {
    BUDGET.with(|cell| {
        let Some(mut b) = cell.get() else { return Ok(()) };
        let over = match item {
            Some(Item::Namespace) => {
                b.namespaces = b.namespaces.saturating_add(n);
                (b.namespaces > b.limits.max_services)
                    .then(|| format!("more than {} namespaces (the service cap, --registry-max-services)", b.limits.max_services))
            }
            Some(Item::Service) => {
                b.services = b.services.saturating_add(n);
                (b.services > b.limits.max_services)
                    .then(|| format!("more than {} services after alias expansion (--registry-max-services)", b.limits.max_services))
            }
            Some(Item::Instance) => {
                b.instances = b.instances.saturating_add(n);
                (b.instances > b.limits.max_instances)
                    .then(|| format!("more than {} instances after alias expansion (--registry-max-instances)", b.limits.max_instances))
            }
            None => None,
        };
        b.string_bytes = b.string_bytes.saturating_add(bytes);
        let over = over.or_else(|| {
            (b.string_bytes > b.max_string_bytes).then(|| {
                format!(
                    "aliases expand the file's names and attributes to more than {} bytes (four times the file plus 16 MiB)",
                    b.max_string_bytes
                )
            })
        });
        cell.set(Some(b));
        match over {
            Some(m) => Err(E::custom(format!("registry too large: {m}"))),
            None => Ok(()),
        }
    })
}

/// Types whose elements count against the budget, and how many bytes of strings each holds (not
/// counting attribute maps, which are charged entry by entry as they are read).
pub(super) trait Counted {
    const ITEM: Item;
    /// Elements this one stands for.
    fn count(&self) -> usize {
        1
    }
    fn string_bytes(&self) -> usize;
}

/// `deserialize_with` for the namespace, service and instance lists: each element is charged as
/// soon as it is built (its own elements were charged while it was being built), so a cap stops
/// the expansion one element past it.
pub(super) fn seq<'de, D: Deserializer<'de>, T: Deserialize<'de> + Counted>(d: D) -> Result<Vec<T>, D::Error> {
    struct V<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de> + Counted> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            // The size hint comes from the file: never trusted for an allocation.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(v) = seq.next_element::<T>()? {
                charge_n::<A::Error>(Some(T::ITEM), v.count(), v.string_bytes())?;
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V(PhantomData))
}

/// Charges `bytes` of strings (an attribute entry).
pub(super) fn charge_bytes<E: de::Error>(bytes: usize) -> Result<(), E> {
    charge(None, bytes)
}

/// Counts the `n` instances of a service taken as it was (not read from this text).
pub(super) fn charge_instances<E: de::Error>(n: usize) -> Result<(), E> {
    charge_n(Some(Item::Instance), n, 0)
}
