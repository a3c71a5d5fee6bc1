//! Revisions and endpoints from the Kubernetes API (the default source).

use std::{future::Future, pin::Pin};

use super::Source;
use crate::revisions::{MeshMode, Registry};

/// The Kubernetes source.
pub(crate) struct KubeSource {
    /// `config-network`'s mesh settings, read once at start as upstream does.
    pub(crate) mesh: MeshMode,
    pub(crate) passthrough: bool,
}

impl KubeSource {
    /// Connects with the in-cluster configuration or `KUBECONFIG`.
    pub(crate) async fn connect(_system_namespace: &str) -> Result<Self, String> {
        Err("the Kubernetes source is not available in this build; use --revisions FILE".into())
    }
}

impl Source for KubeSource {
    fn run(
        self: Box<Self>,
        _registry: Registry,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        Box::pin(async { Err("not available".to_owned()) })
    }
}
