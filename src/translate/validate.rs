//! The checks istiod applies to a ServiceEntry (SPEC 2.6), applied here before anything is emitted,
//! because istiod drops an invalid resource silently (a warning in its own log, nothing sent back).
use std::collections::HashSet;
use std::net::IpAddr;

use super::{Resolution, ServiceEntrySpec};

/// Istio's protocol names for service ports.
const PORT_PROTOCOLS: &[&str] =
    &["HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS", "UDP"];

/// The protocol name in upper case, when it is one of Istio's port protocols (any case accepted).
pub fn protocol(p: &str) -> Result<String, String> {
    let up = p.trim().to_ascii_uppercase();
    if PORT_PROTOCOLS.contains(&up.as_str()) {
        Ok(up)
    } else {
        Err(format!("{p:?} is not an Istio protocol (one of {})", PORT_PROTOCOLS.join(", ")))
    }
}

/// A ServiceEntry `exportTo` list, with istiod's own rules (`validateExportTo` for service entries
/// in istio/istio pkg/config/validation, same messages): each entry is `.` (this namespace), `*`
/// (every namespace), `~` (no one) or a DNS-1123 label (upper case allowed, as istiod allows it);
/// no duplicates (`.` counts as `namespace`, when known); `*` and `~` only alone.
pub fn export_to(list: &[String], namespace: Option<&str>) -> Result<(), String> {
    let mut seen = HashSet::new();
    for e in list {
        let key = if e == "." { namespace.unwrap_or(".") } else { e.as_str() };
        if !seen.insert(key) {
            return Err(if key != e {
                format!("duplicate entries in exportTo: . and current namespace {key}")
            } else {
                format!("duplicate entries in exportTo for entry {e}")
            });
        }
        let ok = matches!(e.as_str(), "." | "*" | "~")
            || (!e.is_empty()
                && e.len() <= 63
                && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !e.starts_with('-')
                && !e.ends_with('-'));
        if !ok {
            return Err(format!(
                "exportTo {e:?}: only .,*, or a valid DNS 1123 label is allowed as exportTo entry (or ~ for no one)"
            ));
        }
    }
    if list.len() > 1 && seen.contains("*") {
        return Err("cannot have both public (*) and non-public exportTo values for a resource".into());
    }
    if list.len() > 1 && seen.contains("~") {
        return Err("cannot export service entry to no one (~) and someone".into());
    }
    Ok(())
}

/// Protocols a ServiceEntry with several hosts may use (istiod: HTTP or TLS ones).
pub fn is_http_or_tls(protocol: &str) -> bool {
    matches!(protocol, "HTTP" | "HTTPS" | "HTTP2" | "GRPC" | "GRPC-WEB" | "TLS")
}

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a DNS-1123 label (1-63 characters of a-z, 0-9, '-', alphanumeric at both ends)"))
    }
}

/// A fully qualified DNS name made of DNS-1123 labels, at most 253 characters, whose last label is
/// not all digits.
pub fn dns_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty name".into());
    }
    if s.len() > 253 {
        return Err(format!("{s:?} is longer than 253 characters"));
    }
    for label in s.split('.') {
        dns_label(label).map_err(|e| format!("{s:?}: label {e}"))?;
    }
    if s.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("{s:?}: the top-level label must not be all digits"));
    }
    Ok(())
}

/// A ServiceEntry host: a DNS name, never a wildcard.
pub fn host(h: &str) -> Result<(), String> {
    if h.contains('*') {
        return Err(format!("host {h:?} contains '*': wildcard hosts are not produced"));
    }
    dns_name(h).map_err(|e| format!("host {e}"))
}

fn label_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A Kubernetes label key: `[prefix/]name`, prefix a DNS subdomain of at most 253 characters.
pub fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty() && p.len() <= 253 && p.split('.').all(|l| dns_label(l).is_ok());
        if !ok {
            return Err(format!("label key {k:?}: prefix is not a DNS subdomain"));
        }
    }
    if !label_name_part(name) {
        return Err(format!("label key {k:?} is not a valid Kubernetes label name"));
    }
    Ok(())
}

/// A Kubernetes label value: empty, or up to 63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
pub fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || label_name_part(v) {
        Ok(())
    } else {
        Err(format!("label value {v:?} is not a valid Kubernetes label value"))
    }
}

fn ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
    }
}

/// istiod's ServiceEntry validation, as far as the fields this server fills go.
pub fn service_entry(se: &ServiceEntrySpec) -> Result<(), String> {
    if se.hosts.is_empty() {
        return Err("no hosts".into());
    }
    for h in &se.hosts {
        host(h)?;
    }
    for a in &se.addresses {
        if !ip_or_cidr(a) {
            return Err(format!("address {a:?} is not an IP address or CIDR"));
        }
    }
    if se.ports.is_empty() {
        return Err("no ports".into());
    }
    let mut numbers = HashSet::new();
    let mut names = HashSet::new();
    for p in &se.ports {
        if !(1..=65535).contains(&p.number) {
            return Err(format!("port {} is out of range 1-65535", p.number));
        }
        dns_label(&p.name).map_err(|e| format!("port name {e}"))?;
        if !PORT_PROTOCOLS.contains(&p.protocol.as_str()) {
            return Err(format!("port {} has unknown protocol {:?}", p.number, p.protocol));
        }
        if !numbers.insert(p.number) {
            return Err(format!("port number {} is declared twice", p.number));
        }
        if !names.insert(p.name.as_str()) {
            return Err(format!("port name {:?} is declared twice", p.name));
        }
    }
    for ep in &se.endpoints {
        match se.resolution {
            Resolution::Static => {
                if ep.address.parse::<IpAddr>().is_err() {
                    return Err(format!("STATIC resolution needs IP endpoints; {:?} is not an IP", ep.address));
                }
            }
            Resolution::Dns => {
                if ep.address.parse::<IpAddr>().is_err() {
                    dns_name(&ep.address).map_err(|e| format!("endpoint address {e}"))?;
                }
            }
        }
        for (name, number) in &ep.ports {
            if !names.contains(name.as_str()) {
                return Err(format!("endpoint {} names port {name:?}, which the service does not declare", ep.address));
            }
            if !(1..=65535).contains(number) {
                return Err(format!("endpoint {} port {number} is out of range 1-65535", ep.address));
            }
        }
        for (k, v) in &ep.labels {
            label_key(k)?;
            label_value(v)?;
        }
    }
    let http_or_tls_only = se.ports.iter().all(|p| is_http_or_tls(&p.protocol));
    if se.hosts.len() > 1 && !http_or_tls_only {
        return Err("more than one host with DNS/STATIC resolution requires HTTP or TLS ports only".into());
    }
    Ok(())
}
