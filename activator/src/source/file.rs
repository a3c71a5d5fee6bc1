//! Revisions from a JSON file (`--revisions FILE`), reloaded when it changes.
//!
//! The file is checked every 10 ms (a `stat`, which also sees an atomic rename), so an edit is
//! picked up well within 50 ms. An invalid file is logged and ignored: the last good state stays.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    time::{Duration, SystemTime},
};

use proxy_core::{client::Protocol, timeout::Timeouts};
use serde::Deserialize;

use super::Source;
use crate::revisions::{Endpoints, Registry, RevId, RevisionSpec};

const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    revisions: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    namespace: String,
    name: String,
    #[serde(default)]
    container_concurrency: u32,
    #[serde(default = "default_timeout")]
    timeout_seconds: u64,
    #[serde(default)]
    response_start_timeout_seconds: u64,
    #[serde(default)]
    idle_timeout_seconds: u64,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    protocol: Option<String>,
    /// The private service's `ClusterIP:port`, for the mesh fallback.
    #[serde(default)]
    private_service: Option<String>,
}

fn default_timeout() -> u64 {
    300
}

/// One revision of the file.
#[derive(Debug)]
pub(crate) struct Listed {
    pub(crate) id: RevId,
    pub(crate) spec: RevisionSpec,
    pub(crate) endpoints: Vec<SocketAddr>,
    pub(crate) private_service: Option<SocketAddr>,
}

/// A parsed file.
pub(crate) type Revisions = Vec<Listed>;

/// Parses the file's text; errors name the revision and field.
pub(crate) fn parse(text: &str) -> Result<Revisions, String> {
    let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(file.revisions.len());
    let mut seen = HashSet::new();
    for (i, e) in file.revisions.into_iter().enumerate() {
        let at = format!("revisions[{i}] ({}/{})", e.namespace, e.name);
        if e.namespace.is_empty() || e.name.is_empty() {
            return Err(format!(
                "revisions[{i}]: namespace and name must not be empty"
            ));
        }
        if e.timeout_seconds == 0 {
            return Err(format!("{at}.timeoutSeconds: must be at least 1"));
        }
        let protocol = match e.protocol.as_deref() {
            None | Some("http1") => Protocol::Http1,
            Some("h2c") => Protocol::H2c,
            Some(p) => {
                return Err(format!(
                    "{at}.protocol: {p:?} is neither \"http1\" nor \"h2c\""
                ));
            }
        };
        let mut endpoints = Vec::with_capacity(e.endpoints.len());
        for ep in &e.endpoints {
            endpoints.push(
                ep.parse::<SocketAddr>()
                    .map_err(|_| format!("{at}.endpoints: {ep:?} is not an ip:port"))?,
            );
        }
        let private_service = match &e.private_service {
            None => None,
            Some(s) => Some(
                s.parse::<SocketAddr>()
                    .map_err(|_| format!("{at}.privateService: {s:?} is not an ip:port"))?,
            ),
        };
        let id = RevId {
            namespace: e.namespace,
            name: e.name,
        };
        if !seen.insert(id.clone()) {
            return Err(format!("{at}: listed twice"));
        }
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        let spec = RevisionSpec {
            container_concurrency: e.container_concurrency as usize,
            timeouts: Timeouts {
                request: Duration::from_secs(e.timeout_seconds),
                response_start: secs(e.response_start_timeout_seconds),
                idle: secs(e.idle_timeout_seconds),
            },
            protocol,
            probe_optimisation: true,
        };
        out.push(Listed {
            id,
            spec,
            endpoints,
            private_service,
        });
    }
    Ok(out)
}

/// The file source.
pub(crate) struct FileSource {
    path: PathBuf,
    initial: Revisions,
    stamp: Option<Stamp>,
}

/// What tells a changed file apart: identity, size and modification time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        len: m.len(),
        modified: m.modified().ok(),
    })
}

impl FileSource {
    /// Reads the file once; at start-up a missing or invalid file is an error.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let stamp = stamp(path);
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--revisions {}: {e}", path.display()))?;
        let initial = parse(&text).map_err(|e| format!("--revisions {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            initial,
            stamp,
        })
    }
}

fn apply(registry: &Registry, known: &mut HashSet<RevId>, revisions: Revisions) {
    let mut now = HashSet::with_capacity(revisions.len());
    for Listed {
        id,
        spec,
        endpoints,
        private_service,
    } in revisions
    {
        registry.upsert(&id, spec);
        registry.set_private_service(&id, private_service);
        // Listed endpoints count as ready; each is still probed before it gets traffic.
        registry.set_endpoints(
            &id,
            Endpoints {
                ready: endpoints,
                not_ready: Vec::new(),
            },
        );
        now.insert(id);
    }
    for gone in known.difference(&now) {
        registry.remove(gone);
    }
    *known = now;
}

impl Source for FileSource {
    fn run(
        self: Box<Self>,
        registry: Registry,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        Box::pin(async move {
            let Self {
                path,
                initial,
                mut stamp,
            } = *self;
            let mut known = HashSet::new();
            tracing::info!(file = %path.display(), revisions = initial.len(), "revisions loaded");
            apply(&registry, &mut known, initial);
            registry.mark_synced();
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                let now = stamp_of(&path).await;
                if now == stamp {
                    continue;
                }
                stamp = now;
                match tokio::fs::read_to_string(&path)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse(&t))
                {
                    Ok(revs) => {
                        tracing::info!(file = %path.display(), revisions = revs.len(), "revisions reloaded");
                        apply(&registry, &mut known, revs);
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "invalid revisions file; keeping the last good state");
                    }
                }
            }
        })
    }
}

async fn stamp_of(path: &Path) -> Option<Stamp> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || stamp(&path))
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape_and_names_bad_fields() {
        let ok = parse(r#"{"revisions":[{"namespace":"default","name":"hello-00001","containerConcurrency":0,"timeoutSeconds":300,"endpoints":["127.0.0.1:8012"],"protocol":"h2c","idleTimeoutSeconds":5}]}"#).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].spec.protocol, Protocol::H2c);
        assert_eq!(ok[0].spec.timeouts.idle, Some(Duration::from_secs(5)));
        assert_eq!(ok[0].spec.timeouts.response_start, None);
        assert_eq!(ok[0].private_service, None);

        let e = parse(r#"{"revisions":[{"namespace":"d","name":"r","endpoints":["nope"]}]}"#)
            .unwrap_err();
        assert!(e.contains("revisions[0] (d/r).endpoints"), "{e}");
        let e = parse(r#"{"revisions":[{"namespace":"d","name":"r","cc":1}]}"#).unwrap_err();
        assert!(e.contains("unknown field `cc`"), "{e}");
        let e =
            parse(r#"{"revisions":[{"namespace":"d","name":"r","protocol":"h3"}]}"#).unwrap_err();
        assert!(e.contains("protocol"), "{e}");
    }
}
