//! Local mode: the activator runs instances (sample app + real queue-proxy) itself.

use std::{collections::HashMap, time::Duration};

use tests::{ACTIVATOR_EPHEMERAL_PORTS, ACTIVATOR_PORT_KEYS, Process, TempDir, eventually, get};

/// The sample app, as built for the tests.
fn hello() -> String {
    tests::binary("examples/hello")
        .to_string_lossy()
        .into_owned()
}

fn env() -> HashMap<String, String> {
    [("ACTIVATOR_LOG_LEVEL", "debug")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

struct Local {
    process: Process,
    _dir: TempDir,
}

impl Local {
    fn start(toml: &str) -> Self {
        let dir = TempDir::new();
        let file = dir.0.join("local.toml");
        std::fs::write(&file, toml).unwrap();
        let file = file.to_string_lossy().into_owned();
        let process = Process::start_binary(
            "activator",
            &[&["--local", &file][..], &ACTIVATOR_EPHEMERAL_PORTS].concat(),
            &env(),
            &ACTIVATOR_PORT_KEYS,
        );
        Self { process, _dir: dir }
    }

    async fn get(&self, service: &str) -> tests::Collected {
        self.get_path(service, "/").await
    }

    async fn get_path(&self, service: &str, path: &str) -> tests::Collected {
        get(
            &format!(
                "http://127.0.0.1:{}{path}",
                self.process.port("ACTIVATOR_HTTP1_PORT")
            ),
            &[("host", &format!("{service}.localhost"))],
        )
        .await
    }
}

/// A service running the sample app, marked in its environment so that the test can find its
/// processes (the queue-proxies carry the name as `SERVING_REVISION`).
fn service(name: &str, idle: u64) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\ncommand = [\"/usr/bin/env\", \"LOCAL_TEST_MARKER={name}\", \"{}\"]\nscale_to_zero_after_seconds = {idle}\n",
        hello()
    )
}

/// The pids of a service's processes, apps and queue-proxies, found by their environment.
fn instances(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if !zombie
            && environ.split(|b| *b == 0).any(|kv| {
                kv == format!("SERVING_REVISION={marker}").as_bytes()
                    || kv == format!("LOCAL_TEST_MARKER={marker}").as_bytes()
            })
        {
            out.push(pid);
        }
    }
    out
}

#[tokio::test]
async fn the_first_request_starts_an_instance_and_idleness_stops_it() {
    let local = Local::start(&service("hello-idle", 1));
    assert!(
        instances("hello-idle").is_empty(),
        "nothing runs before a request"
    );
    let res = local.get("hello-idle").await;
    assert_eq!(res.status, 200, "{}", local.process.logs());
    assert_eq!(res.text(), "Hello World!\n");
    assert_eq!(
        instances("hello-idle").len(),
        2,
        "an app and its queue-proxy run"
    );
    eventually(
        Duration::from_secs(8),
        "scale to zero after the idle period",
        || async { instances("hello-idle").is_empty() },
    )
    .await;
    // And from zero again.
    assert_eq!(local.get("hello-idle").await.status, 200);
}

#[tokio::test]
async fn a_burst_during_a_cold_start_is_served_in_full() {
    let local = std::sync::Arc::new(Local::start(&service("hello-burst", 30)));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let local = local.clone();
        tasks.push(tokio::spawn(async move {
            local.get("hello-burst").await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "{}", local.process.logs());
    }
}

#[tokio::test]
async fn unknown_services_get_404() {
    let local = Local::start(&service("hello-known", 30));
    assert_eq!(local.get("nope").await.status, 404);
}

#[tokio::test]
async fn no_instance_outlives_a_killed_activator() {
    for sig in ["KILL", "TERM"] {
        let name = format!("hello-{}", sig.to_lowercase());
        let mut local = Local::start(&service(&name, 30));
        assert_eq!(local.get(&name).await.status, 200);
        assert!(!instances(&name).is_empty());
        local.process.signal(sig);
        let code = local.process.wait_exit(Duration::from_secs(10));
        if sig == "TERM" {
            assert_eq!(
                code,
                Some(0),
                "SIGTERM stops local mode promptly and cleanly"
            );
        }
        eventually(
            Duration::from_secs(5),
            "no orphan after the activator died",
            || async { instances(&name).is_empty() },
        )
        .await;
    }
}

#[test]
fn bad_toml_exits_1_naming_the_key_and_line() {
    let dir = TempDir::new();
    let file = dir.0.join("local.toml");
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"x\"\ncommand = [\"{}\"]\nmax_scael = 2\n",
            hello()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(tests::binary("activator"))
        .args(["--local", &file.to_string_lossy()])
        .args(ACTIVATOR_EPHEMERAL_PORTS)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("max_scael") && text.contains("line 4"),
        "{text}"
    );
}

/// Apps (not queue-proxies) of a service, by the marker only the apps carry.
fn apps(name: &str) -> Vec<u32> {
    let needle = format!("LOCAL_TEST_MARKER={name}");
    instances(name)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

#[tokio::test]
async fn cc_1_scales_out_under_concurrent_load() {
    let name = "hello-cc1";
    let local = std::sync::Arc::new(Local::start(&format!(
        "{}container_concurrency = 1\nmax_scale = 3\n",
        service(name, 30)
    )));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let local = local.clone();
        tasks.push(tokio::spawn(async move {
            local.get_path(name, "/?sleep=300").await.status
        }));
    }
    // Three requests at once with cc 1 want three instances, the most allowed.
    eventually(Duration::from_secs(5), "three instances", || async {
        apps(name).len() == 3
    })
    .await;
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "{}", local.process.logs());
    }
    assert!(apps(name).len() <= 3, "never above max_scale");
}

#[tokio::test]
async fn a_crashed_instance_is_replaced_and_requests_keep_succeeding() {
    let name = "hello-crash";
    let local = Local::start(&service(name, 30));
    assert_eq!(local.get(name).await.status, 200);
    let before = apps(name);
    assert_eq!(before.len(), 1);
    let status = std::process::Command::new("kill")
        .args(["-KILL", &before[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The crash is noticed at once (a request already on its way to the dead app gets the
    // queue-proxy's 502, as upstream); from then on requests get a new instance.
    eventually(Duration::from_secs(2), "the exit noticed", || async {
        local.process.logs().contains("instance exited")
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            local.get(name).await.status,
            200,
            "{}",
            local.process.logs()
        );
    }
    let after = apps(name);
    assert_eq!(after.len(), 1);
    assert_ne!(after, before, "a new instance");
}
