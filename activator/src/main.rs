//! Drop-in replacement for Knative Serving's activator.

mod app;
mod autoscaler;
mod config;
mod handler;
mod local;
mod metrics;
mod revisions;
mod source;

use std::process::ExitCode;

use clap::Parser;
use proxy_core::{log, runtime};

use crate::config::{Args, Config};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("activator: {p}");
            }
            return ExitCode::from(1);
        }
    };
    log::init(
        "activator",
        "activator",
        config.log_level,
        String::new(),
        config.pod_name.clone(),
    );
    let runtime::Started {
        runtime: rt,
        workers,
        nofile,
    } = match runtime::start(config.args.worker_threads) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "could not start the runtime");
            return ExitCode::from(1);
        }
    };
    tracing::info!(workers, nofile, "starting activator");
    match rt.block_on(app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "activator failed");
            eprintln!("activator: {e}");
            ExitCode::from(1)
        }
    }
}
