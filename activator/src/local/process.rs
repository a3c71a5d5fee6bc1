//! Child processes of local mode: an app and its queue-proxy per instance.
//!
//! Children must never outlive the activator, even when it is killed with SIGKILL. Each is
//! started through `setpriv --pdeathsig KILL`, which has the kernel kill it when the thread that
//! started it ends, and all are started from one thread that lives as long as the process. Each
//! child leads its own process group, so that stopping it also stops what it started.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::Duration,
};

use std::os::unix::process::CommandExt;

use tokio::sync::{mpsc, oneshot};

use super::{DRAIN_QUIET, config::Service};

/// A child that ended on its own.
#[derive(Debug)]
pub(crate) struct Exited {
    pub(crate) instance: u32,
    pub(crate) what: &'static str,
    pub(crate) status: String,
}

/// One running instance: its queue-proxy's address and the two processes.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) addr: SocketAddr,
    app: u32,
    queue_proxy: u32,
}

impl Instance {
    /// Drains the queue-proxy (it finishes what it carries within its quiet period), then stops
    /// the app; nothing waits for it.
    pub(crate) fn stop(self) {
        let (app, qp) = (self.app, self.queue_proxy);
        thread::spawn(move || {
            signal("TERM", qp, false);
            let deadline = std::time::Instant::now() + DRAIN_QUIET + Duration::from_secs(1);
            while alive(qp) && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            signal("KILL", qp, true);
            signal("TERM", app, true);
            thread::sleep(Duration::from_millis(200));
            signal("KILL", app, true);
        });
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// Sends `sig` to `pid`, or to its whole process group.
fn signal(sig: &str, pid: u32, group: bool) {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

struct Request {
    svc: Service,
    instance: u32,
    exits: mpsc::UnboundedSender<Exited>,
    reply: oneshot::Sender<Result<Instance, String>>,
}

/// Starts instances from its own long-lived thread. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Spawner {
    tx: std::sync::mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Spawner {
    pub(crate) fn start(queue_proxy: PathBuf) -> Result<Self, String> {
        if Command::new("setpriv")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err("local mode needs `setpriv` (util-linux) to tie children to it".into());
        }
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        thread::Builder::new()
            .name("local-spawner".into())
            .spawn(move || {
                // Children die with this thread, so it must outlive them all: it ends only with
                // the process.
                for req in rx {
                    let result = start_instance(&queue_proxy, &req.svc, req.instance, &req.exits);
                    let _ = req.reply.send(result);
                }
                loop {
                    thread::park();
                }
            })
            .map_err(|e| format!("cannot start the spawner thread: {e}"))?;
        Ok(Self { tx })
    }

    pub(crate) async fn spawn(
        &self,
        svc: &Service,
        instance: u32,
        exits: mpsc::UnboundedSender<Exited>,
    ) -> Result<Instance, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                svc: svc.clone(),
                instance,
                exits,
                reply,
            })
            .map_err(|_| "the spawner thread is gone".to_owned())?;
        rx.await
            .map_err(|_| "the spawner thread is gone".to_owned())?
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn start_instance(
    queue_proxy: &std::path::Path,
    svc: &Service,
    instance: u32,
    exits: &mpsc::UnboundedSender<Exited>,
) -> Result<Instance, String> {
    let app_port = free_port()?;
    let qp_port = free_port()?;
    let prefix = format!("{}-{instance}", svc.name);

    let mut app = Command::new("setpriv");
    app.args(["--pdeathsig", "KILL", "--"])
        .arg(&svc.program)
        .args(&svc.args)
        .env("PORT", app_port.to_string());
    let app = launch(app, &prefix, "app", instance, exits)
        .map_err(|e| format!("{}: {e}", svc.program.display()))?;

    let probe = match &svc.readiness {
        Some(path) => serde_json::json!({
            "httpGet": {"path": path, "port": app_port, "host": "127.0.0.1"}
        }),
        None => serde_json::json!({"tcpSocket": {"port": app_port, "host": "127.0.0.1"}}),
    };
    let mut qp = Command::new("setpriv");
    qp.args(["--pdeathsig", "KILL", "--"])
        .arg(queue_proxy)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "CONTAINER_CONCURRENCY",
            svc.container_concurrency.to_string(),
        )
        .env("QUEUE_SERVING_PORT", qp_port.to_string())
        .env("QUEUE_SERVING_TLS_PORT", "0")
        .env("USER_PORT", app_port.to_string())
        .env(
            "REVISION_TIMEOUT_SECONDS",
            svc.timeout.as_secs().to_string(),
        )
        .env("SERVING_LOGGING_CONFIG", "")
        .env("SERVING_LOGGING_LEVEL", "info")
        .env("SERVING_NAMESPACE", super::NAMESPACE)
        .env("SERVING_CONFIGURATION", &svc.name)
        .env("SERVING_REVISION", &svc.name)
        .env("SERVING_POD", &prefix)
        .env("SERVING_POD_IP", "127.0.0.1")
        .env("SERVING_READINESS_PROBE", probe.to_string())
        .env("QUEUE_METRICS_PORT", "0")
        .env("QUEUE_ADMIN_PORT", "0")
        .env(
            "QUEUE_DRAIN_QUIET_SECONDS",
            DRAIN_QUIET.as_secs().to_string(),
        );
    let qp = match launch(qp, &prefix, "queue-proxy", instance, exits) {
        Ok(pid) => pid,
        Err(e) => {
            signal("KILL", app, true);
            return Err(format!("{}: {e}", queue_proxy.display()));
        }
    };
    Ok(Instance {
        addr: SocketAddr::from(([127, 0, 0, 1], qp_port)),
        app,
        queue_proxy: qp,
    })
}

/// Starts `cmd` in its own process group, forwards its output with a prefix, and reports its
/// exit on `exits`.
fn launch(
    mut cmd: Command,
    prefix: &str,
    what: &'static str,
    instance: u32,
    exits: &mpsc::UnboundedSender<Exited>,
) -> std::io::Result<u32> {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: Child = cmd.spawn()?;
    let pid = child.id();
    let label = format!("[{prefix} {what}]");
    if let Some(out) = child.stdout.take() {
        forward(out, label.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, label);
    }
    let exits = exits.clone();
    thread::spawn(move || {
        let status: std::io::Result<ExitStatus> = child.wait();
        let _ = exits.send(Exited {
            instance,
            what,
            status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
        });
    });
    Ok(pid)
}

fn forward(stream: impl Read + Send + 'static, label: String) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            eprintln!("{label} {line}");
        }
    });
}
