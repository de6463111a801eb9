//! The sources file (`--sources-file`): several Cloud Map sources (accounts, Regions, roles) in one
//! server. Each entry becomes one [`Settings`]: the command line's settings (poll intervals, removal
//! guard, call timeout, and the API budget and endpoint unless the entry sets its own) with the
//! entry's name, credentials, Region, selection and budget.
//!
//! ```yaml
//! sources:
//!   - name: payments-use1
//!     region: us-east-1
//!     roleArn: arn:aws:iam::111122223333:role/cloudmap-mcp-reader
//!     externalId: mesh-prod
//!     includeNamespaces: [payments-*]
//!     apiRate: 50
//!   - name: shared-euw1
//!     region: eu-west-1
//!     ownerAccount: "444455556666"   # only namespaces shared (AWS RAM) by this account
//! ```
//!
//! Validated like the registry file: unknown keys are refused, and every error names its place
//! (`line L column C` from the YAML parser, or `sources[i] ("name")`).
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{check_endpoint_url, BudgetConfig, Selection, Settings};
use crate::model::NamespaceType;

/// Most sources one file may name (each has its own poller, metrics series and API budget).
pub const MAX_SOURCES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SourcesFileError {
    #[error("cannot read sources file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("sources file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("sources file {path}: {at}: {message}")]
    Invalid { path: PathBuf, at: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSources {
    sources: Vec<FileSource>,
}

/// A string, also written as a YAML number (`ownerAccount: 111122223333`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    S(String),
    I(u64),
}

impl Text {
    fn into_string(self) -> String {
        match self {
            Text::S(s) => s,
            Text::I(i) => i.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileSource {
    name: String,
    region: Option<String>,
    role_arn: Option<String>,
    external_id: Option<Text>,
    owner_account: Option<Text>,
    endpoint_url: Option<String>,
    sts_endpoint_url: Option<String>,
    #[serde(default)]
    include_namespaces: Vec<String>,
    #[serde(default)]
    exclude_namespaces: Vec<String>,
    #[serde(default)]
    include_services: Vec<String>,
    #[serde(default)]
    exclude_services: Vec<String>,
    #[serde(default)]
    namespace_types: Vec<NamespaceType>,
    api_rate: Option<f64>,
    api_burst: Option<u32>,
    api_concurrency: Option<u32>,
    first_sync_timeout: Option<String>,
}

/// One configured source: its settings, and how long the first sync of the whole server waits
/// for it before serving the other sources without it.
#[derive(Clone, Debug)]
pub struct Source {
    pub settings: Settings,
    pub first_sync_timeout: Duration,
}

/// Source names are label values, log fields and debug keys: DNS-label-like, at most 63 bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} must be 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
        ))
    }
}

fn check_role_arn(arn: &str) -> Result<(), String> {
    // arn:PARTITION:iam::ACCOUNT:role/PATH/NAME
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && !parts[1].is_empty()
        && parts[2] == "iam"
        && parts[3].is_empty()
        && is_account_id(parts[4])
        && parts[5].strip_prefix("role/").is_some_and(|n| !n.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!("roleArn {arn:?} is not an IAM role ARN such as arn:aws:iam::111122223333:role/NAME"))
    }
}

/// A 12-digit AWS account id.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn check_external_id(id: &str) -> Result<(), String> {
    let ok = (2..=1224).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@:/-_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("externalId {id:?} must be 2-1224 characters of letters, digits and +=,.@:/-_"))
    }
}

/// Parses sources file contents. `base` gives everything an entry does not set; `default_timeout`
/// the first-sync timeout of entries without `firstSyncTimeout`. `path` is only for messages.
pub fn parse(
    path: &Path,
    text: &str,
    base: &Settings,
    default_timeout: Duration,
) -> Result<Vec<Source>, SourcesFileError> {
    let path_buf = || path.to_path_buf();
    if let Some((line, column)) = crate::source::file::flow_nesting_beyond(text, crate::source::file::MAX_FLOW_NESTING)
    {
        return Err(SourcesFileError::Parse {
            path: path_buf(),
            message: format!("line {line} column {column}: flow collections nested too deep"),
        });
    }
    let file: FileSources =
        serde_yaml::from_str(text).map_err(|e| SourcesFileError::Parse { path: path_buf(), message: e.to_string() })?;
    let invalid = |at: String, message: String| SourcesFileError::Invalid { path: path_buf(), at, message };
    if file.sources.is_empty() {
        return Err(invalid("sources".into(), "no sources: give at least one".into()));
    }
    if file.sources.len() > MAX_SOURCES {
        return Err(invalid("sources".into(), format!("{} sources; at most {MAX_SOURCES}", file.sources.len())));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(file.sources.len());
    for (i, f) in file.sources.into_iter().enumerate() {
        let at = format!("sources[{i}] ({:?})", f.name);
        let bad = |message: String| invalid(at.clone(), message);
        check_name(&f.name).map_err(bad)?;
        if !seen.insert(f.name.clone()) {
            return Err(bad("name appears twice: source names must be unique".into()));
        }
        let external_id = f.external_id.map(Text::into_string);
        if let Some(arn) = &f.role_arn {
            check_role_arn(arn).map_err(bad)?;
        }
        if let Some(id) = &external_id {
            if f.role_arn.is_none() {
                return Err(bad("externalId needs roleArn (it is sent with sts:AssumeRole)".into()));
            }
            check_external_id(id).map_err(bad)?;
        }
        let owner_account = f.owner_account.map(Text::into_string);
        if let Some(a) = &owner_account {
            if !is_account_id(a) {
                return Err(bad(format!(
                    "ownerAccount {a:?} is not a 12-digit account id (quote it when it starts with 0)"
                )));
            }
        }
        for (key, url) in [("endpointUrl", &f.endpoint_url), ("stsEndpointUrl", &f.sts_endpoint_url)] {
            if let Some(u) = url {
                check_endpoint_url(key, u).map_err(|e| bad(e.to_string()))?;
            }
        }
        if let Some(r) = &f.region {
            let ok = !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(bad(format!("region {r:?} is not an AWS Region such as us-east-1")));
            }
        }
        if let Some(rate) = f.api_rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(bad(format!("apiRate {rate} must be a positive number")));
            }
        }
        for (key, v) in [("apiBurst", f.api_burst), ("apiConcurrency", f.api_concurrency)] {
            if v == Some(0) {
                return Err(bad(format!("{key} must be at least 1")));
            }
        }
        let first_sync_timeout = match &f.first_sync_timeout {
            None => default_timeout,
            Some(t) => humantime::parse_duration(t)
                .map_err(|e| bad(format!("firstSyncTimeout {t:?} is not a duration such as 30s: {e}")))?,
        };
        let selection = Selection::with_names(
            ["includeNamespaces", "excludeNamespaces", "includeServices", "excludeServices"],
            &f.include_namespaces,
            &f.exclude_namespaces,
            &f.include_services,
            &f.exclude_services,
            &f.namespace_types,
        )
        .map_err(|e| bad(e.to_string()))?
        .with_owner_account(owner_account);
        let mut s = base.clone();
        s.name = f.name;
        s.client.region = f.region.or_else(|| base.client.region.clone());
        s.client.endpoint_url = f.endpoint_url.or_else(|| base.client.endpoint_url.clone());
        s.client.sts_endpoint_url = f.sts_endpoint_url;
        s.client.role_arn = f.role_arn;
        s.client.external_id = external_id;
        s.client.session_name = Some(format!("cloudmap-mcp-{}", s.name));
        s.selection = selection;
        s.budget = BudgetConfig {
            rate: f.api_rate.unwrap_or(base.budget.rate),
            burst: f.api_burst.unwrap_or(base.budget.burst),
            concurrency: f.api_concurrency.unwrap_or(base.budget.concurrency),
        };
        out.push(Source { settings: s, first_sync_timeout });
    }
    Ok(out)
}

/// A sources file larger than this is refused (a hundred sources take a few KB).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads and parses the file: a regular file only (a FIFO in its place would block startup), at
/// most [`MAX_FILE_BYTES`].
pub fn load(path: &Path, base: &Settings, default_timeout: Duration) -> Result<Vec<Source>, SourcesFileError> {
    let text = crate::util::fs::read_regular_string(path, MAX_FILE_BYTES)
        .map_err(|e| SourcesFileError::Io { path: path.to_path_buf(), source: e.into() })?;
    parse(path, &text, base, default_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::cloudmap::ClientConfig;

    fn base() -> Settings {
        let mut s = crate::source::cloudmap::test_settings();
        s.client = ClientConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some("http://127.0.0.1:5000".into()),
            call_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        };
        s
    }

    fn parse_str(text: &str) -> Result<Vec<Source>, String> {
        parse(Path::new("sources.yaml"), text, &base(), Duration::from_secs(60)).map_err(|e| e.to_string())
    }

    #[test]
    fn full_entry_and_defaults_from_the_command_line() {
        let got = parse_str(
            r#"
sources:
  - name: payments-use1
    region: eu-west-1
    roleArn: arn:aws:iam::111122223333:role/cloudmap-mcp-reader
    externalId: mesh-prod
    ownerAccount: 444455556666
    stsEndpointUrl: http://127.0.0.1:6000
    includeNamespaces: [payments-*]
    excludeServices: ["*-canary"]
    namespaceTypes: [HTTP]
    apiRate: 5
    apiBurst: 2
    apiConcurrency: 3
    firstSyncTimeout: 15s
  - name: plain
"#,
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        let s = &got[0].settings;
        assert_eq!(s.name, "payments-use1");
        assert_eq!(s.client.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.client.role_arn.as_deref(), Some("arn:aws:iam::111122223333:role/cloudmap-mcp-reader"));
        assert_eq!(s.client.external_id.as_deref(), Some("mesh-prod"));
        assert_eq!(s.client.session_name.as_deref(), Some("cloudmap-mcp-payments-use1"));
        assert_eq!(s.client.sts_endpoint_url.as_deref(), Some("http://127.0.0.1:6000"));
        assert_eq!(s.client.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"), "from the command line");
        assert_eq!((s.budget.rate, s.budget.burst, s.budget.concurrency), (5.0, 2, 3));
        assert_eq!(got[0].first_sync_timeout, Duration::from_secs(15));
        let view = s.selection.view();
        assert_eq!(view.include_namespaces, ["payments-*"]);
        assert_eq!(view.exclude_services, ["*-canary"]);
        assert_eq!(view.owner_account.as_deref(), Some("444455556666"));
        assert_eq!(view.namespace_types, [NamespaceType::Http]);
        // The second takes everything from the command line.
        let p = &got[1];
        assert_eq!(p.settings.client.region.as_deref(), Some("us-east-1"));
        assert!(p.settings.client.role_arn.is_none());
        assert_eq!(p.settings.budget.rate, 100.0);
        assert_eq!(p.first_sync_timeout, Duration::from_secs(60));
        assert_eq!(p.settings.resync_interval, Duration::from_secs(60));
    }

    #[test]
    fn errors_name_their_place() {
        let cases: &[(&str, &str)] = &[
            ("sources:\n  - name: a\n    regoin: x\n", "unknown field `regoin`"),
            ("sources:\n  - name: a\n    regoin: x\n", "line 3 column 5"),
            ("nope: 1\n", "unknown field `nope`"),
            ("sources: []\n", "no sources"),
            ("sources:\n  - name: Bad_Name\n", "sources[0] (\"Bad_Name\"): name \"Bad_Name\" must be"),
            ("sources:\n  - name: a\n  - name: a\n", "sources[1] (\"a\"): name appears twice"),
            ("sources:\n  - name: a\n    roleArn: arn:aws:iam::12:role/x\n", "is not an IAM role ARN"),
            ("sources:\n  - name: a\n    roleArn: arn:aws:iam::111122223333:user/x\n", "is not an IAM role ARN"),
            ("sources:\n  - name: a\n    externalId: abc\n", "externalId needs roleArn"),
            (
                "sources:\n  - name: a\n    roleArn: arn:aws:iam::111122223333:role/x\n    externalId: \"a b\"\n",
                "externalId \"a b\" must be",
            ),
            ("sources:\n  - name: a\n    ownerAccount: 12345\n", "ownerAccount \"12345\" is not a 12-digit account id"),
            (
                "sources:\n  - name: a\n    endpointUrl: localhost:4566\n",
                "endpointUrl \"localhost:4566\" must start with",
            ),
            ("sources:\n  - name: a\n    region: US East\n", "region \"US East\" is not an AWS Region"),
            ("sources:\n  - name: a\n    apiRate: 0\n", "apiRate 0 must be a positive number"),
            ("sources:\n  - name: a\n    apiBurst: 0\n", "apiBurst must be at least 1"),
            (
                "sources:\n  - name: a\n    includeNamespaces: [\"a[b\"]\n",
                "includeNamespaces: \"a[b\" is not a valid glob",
            ),
            ("sources:\n  - name: a\n    namespaceTypes: [VPC]\n", "unknown variant `VPC`"),
            ("sources:\n  - name: a\n    firstSyncTimeout: soon\n", "firstSyncTimeout \"soon\" is not a duration"),
        ];
        for (text, want) in cases {
            let e = parse_str(text).map(|_| ()).unwrap_err();
            assert!(e.starts_with("sources file sources.yaml: "), "{e}");
            assert!(e.contains(want), "{text:?}: {e:?} does not contain {want:?}");
        }
        let many: String = std::iter::once("sources:\n".to_string())
            .chain((0..=MAX_SOURCES).map(|i| format!("  - name: s{i}\n")))
            .collect();
        assert!(parse_str(&many).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn names_are_label_safe() {
        for ok in ["a", "prod-use1", "0a", &"a".repeat(63)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "a/b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
