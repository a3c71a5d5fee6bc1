//! Drop-in replacement for Knative Serving's queue-proxy sidecar.

mod app;
mod config;
mod health;
mod metrics;
mod readiness;
mod tls;

use std::process::ExitCode;

use proxy_core::{log as logging, runtime};

use crate::config::{Config, Env};

fn main() -> ExitCode {
    let config = match Config::from_env(&Env) {
        Ok(c) => c,
        Err(e) => {
            for problem in &e.0 {
                eprintln!("queue-proxy: {problem}");
            }
            return ExitCode::from(1);
        }
    };
    logging::init(
        "queue_proxy",
        "queueproxy",
        logging::level(&config.logging_level, &config.logging_config),
        format!("{}/{}", config.namespace, config.revision),
        config.pod.clone(),
    );
    let runtime::Started {
        runtime: rt,
        workers,
        nofile,
    } = match runtime::start(config.worker_threads) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "could not start the runtime");
            return ExitCode::from(1);
        }
    };
    tracing::info!(workers, nofile, "starting queue-proxy");
    match rt.block_on(app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "queue-proxy failed");
            ExitCode::from(1)
        }
    }
}
