//! Where revisions and their pods come from: Kubernetes, a JSON file, or (in local mode) the
//! activator's own instances. Every source writes into the same [`Registry`], so the request
//! path, probing and throttling are the same whatever the source.

use std::{future::Future, pin::Pin};

use crate::revisions::Registry;

pub(crate) mod file;
pub(crate) mod kube;

/// A source of revisions and endpoints.
pub(crate) trait Source: Send + 'static {
    /// Fills `registry` and keeps it current until the process ends. It returns only on an error
    /// the source cannot recover from; passing problems (a bad file, a lost watch) are logged
    /// and retried inside.
    fn run(
        self: Box<Self>,
        registry: Registry,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
}
